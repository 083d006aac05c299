"""Flex tree attention (mcmdpo.method.attention): the BlockMask equals the boolean tree mask, the flex path's
log-probs equal the SDPA path's (forward, CPU), and the switch changes nothing else.

FlexAttention has no backward on CPU; the gradient equality and the bf16 tolerance are checked by
``bench/gpu_suite.py`` (part ``flex_check``) on a GPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn.attention.flex_attention import create_mask

from mcmdpo.evaluation.benchmarks import Item
from mcmdpo.evaluation.generate import BatchGenerator, GenerationConfig
from mcmdpo.method.attention import (
    BLOCK,
    TREE_IMPLEMENTATION,
    enable_tree_attention,
    resolve_attention,
    text_attention,
    tree_block_mask,
    tree_tables,
)
from mcmdpo.method.logprobs import (
    PreferenceTokens,
    build_tree_row,
    naive_logprobs,
    shared_logprobs,
    tree_attention_mask,
)
from mcmdpo.method.losses import CONDITIONS
from mcmdpo.method.model import build_tiny_llava, load_llava

HALLUCINATION = ("mw_cw_yw", "mw_cw_yl", "ml_cw_yw", "ml_cw_yl")
IMAGE_ID = 4  # <image> of the tiny tokenizer; never drawn below (ids start at 5)


def sample(
    seed: int, prefix: int, ctx_w: int, ctx_l: int, ans_w: int, ans_l: int, image: int
) -> PreferenceTokens:
    gen = torch.Generator().manual_seed(seed)

    def ids(n: int) -> tuple[int, ...]:
        return tuple(torch.randint(5, 300, (n,), generator=gen).tolist())

    def pixels() -> torch.Tensor:
        return torch.randn(1, 3, 56, 56, generator=gen)

    return PreferenceTokens(
        ids(prefix), ids(ctx_w), ids(ctx_l), ids(ans_w), ids(ans_l),
        pixels(), pixels(), (56, 56), (56, 56), image, image,
    )  # fmt: skip


# rows of 300-600 tokens: several 128-blocks, different lengths (padding), a last partial block
SAMPLES = [
    sample(0, 40, 60, 25, 30, 12, 16),
    sample(1, 13, 90, 70, 9, 41, 16),
    sample(2, 35, 20, 20, 20, 20, 16),
]
LONG = [sample(3, 35, 100, 100, 20, 20, 64), sample(4, 20, 70, 110, 15, 33, 64)]


def noise_png(path, seed: int):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40 + 20 * seed, 70, 3), dtype=np.uint8)).save(path)
    return path


def expected_mask(rows: list, width: int) -> torch.Tensor:
    """Independent formulation: token q sees token k iff k lies on q's root-to-segment path (walking
    ``parents``) and, within q's own segment, k comes no later; padding sees only itself."""
    out = torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1)
    for b, row in enumerate(rows):
        for q, seg in enumerate(row.segments):
            path, s = set(), seg
            while s >= 0:
                path.add(s)
                s = row.parents[s]
            for k, other in enumerate(row.segments):
                out[b, q, k] = other in path and (other != seg or k <= q)
    return out


@pytest.mark.parametrize("conditions", [CONDITIONS, HALLUCINATION], ids=["8", "4"])
def test_block_mask_materialises_to_the_boolean_tree_mask(conditions):
    rows = [build_tree_row(s, conditions, IMAGE_ID) for s in SAMPLES]
    width = max(len(r.ids) for r in rows)
    assert width % BLOCK and width > 2 * BLOCK  # several blocks, the last one partial
    block = tree_block_mask(rows, width, "cpu")
    dense = create_mask(block.mask_mod, len(rows), 1, width, width, device="cpu")[:, 0]
    reference = tree_attention_mask(rows, width)[:, 0]
    assert torch.equal(dense, reference)
    assert torch.equal(reference, expected_mask(rows, width))


def test_block_mask_skips_empty_tiles_and_marks_full_ones_exactly():
    rows = [build_tree_row(s, CONDITIONS, IMAGE_ID) for s in LONG]
    width = max(len(r.ids) for r in rows)
    block = tree_block_mask(rows, width, "cpu")
    blocks = -(-width // BLOCK)
    padded = torch.eye(blocks * BLOCK, dtype=torch.bool).repeat(len(rows), 1, 1)
    padded[:, :width, :width] = tree_attention_mask(rows, width)[:, 0]
    tiles = padded.view(len(rows), blocks, BLOCK, blocks, BLOCK)
    any_tile, all_tile = tiles.any(dim=(2, 4)), tiles.all(dim=(2, 4))
    assert torch.equal(block.to_dense()[:, 0].bool(), any_tile)  # visited = partial or full
    full = torch.zeros_like(all_tile)
    for b in range(len(rows)):
        for qb in range(blocks):
            n = int(block.full_kv_num_blocks[b, 0, qb])
            full[b, qb, block.full_kv_indices[b, 0, qb, :n].long()] = True
    assert torch.equal(full, all_tile)
    assert not any_tile.all()  # the tree really skips tiles (e.g. answers under m_l vs m_w's image)


def test_tables_give_padding_its_own_invisible_segment():
    rows = [build_tree_row(s, HALLUCINATION, IMAGE_ID) for s in SAMPLES[:2]]
    width = max(len(r.ids) for r in rows)
    segments, visible = tree_tables(rows, width)
    pad = visible.shape[1] - 1
    assert segments.shape[1] % BLOCK == 0
    short = min(range(2), key=lambda b: len(rows[b].ids))
    assert (segments[short, len(rows[short].ids) :] == pad).all()
    assert not visible[:, pad].any() and not visible[:, :, pad].any()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = build_tiny_llava(tmp_path_factory.mktemp("tiny"), ["Given an image and context."])
    return folder, load_llava(folder, mode="pad", train_vision_tower=True)[0]


def test_flex_forward_equals_sdpa_in_fp32_on_cpu(tiny):
    """FlexAttention (compiled on CPU, forward only) vs SDPA with the boolean mask: <= 1e-5."""
    _, model = tiny
    batch = [sample(10 + i, 30 + 9 * i, 90 - 20 * i, 40, 25 - 5 * i, 18, 16) for i in range(3)]
    assert max(len(build_tree_row(s, CONDITIONS, IMAGE_ID).ids) for s in batch) > 2 * BLOCK
    with torch.no_grad():
        sdpa = shared_logprobs(model, batch, attention="sdpa")
        flex = shared_logprobs(model, batch, attention="flex")
    assert text_attention(model) == TREE_IMPLEMENTATION
    for c in CONDITIONS:
        assert sdpa[c].shape == (3,) and torch.isfinite(sdpa[c]).all()
        assert (sdpa[c] - flex[c]).abs().max().item() <= 1e-5, c


def test_auto_picks_flex_only_for_cuda_and_sdpa_models(tiny):
    _, model = tiny
    assert resolve_attention("auto", model, torch.device("cpu")) == "sdpa"
    assert resolve_attention("auto", model, torch.device("cuda")) == "flex"
    assert resolve_attention("sdpa", model, torch.device("cuda")) == "sdpa"
    with pytest.raises(ValueError, match="tree attention must be one of"):
        resolve_attention("flash", model, torch.device("cpu"))


def test_eager_models_keep_sdpa_and_refuse_flex(tiny):
    folder, _ = tiny
    eager = load_llava(folder, mode="pad", attn_implementation="eager")[0]
    assert resolve_attention("auto", eager, torch.device("cuda")) == "sdpa"
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        enable_tree_attention(eager)


def test_the_switch_changes_nothing_without_a_block_mask_and_is_not_saved(tmp_path, tiny):
    folder, _ = tiny
    model, processor = load_llava(folder, mode="pad")
    batch = SAMPLES[:2]
    items = [Item(i, f"Describe it.{' #' * i}", noise_png(tmp_path / f"{i}.png", i)) for i in range(3)]
    generator = BatchGenerator(model.eval(), processor, GenerationConfig(max_new_tokens=6, batch_size=3))
    with torch.no_grad():
        before = naive_logprobs(model, batch), generator.generate(items)
        enable_tree_attention(model)
        enable_tree_attention(model)  # idempotent
        after = naive_logprobs(model, batch), generator.generate(items)
    assert text_attention(model) == TREE_IMPLEMENTATION
    assert model.config.vision_config._attn_implementation == "sdpa"
    for c in CONDITIONS:
        assert torch.equal(before[0][c], after[0][c])  # the padded naive batch goes through SDPA as before
    assert before[1] == after[1]  # left-padded batched generation with the KV cache too
    model.save_pretrained(tmp_path / "saved")
    assert TREE_IMPLEMENTATION not in (tmp_path / "saved" / "config.json").read_text()
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["model_type"] == "llava_next"
