"""Naive vs shared (vision once + prefix tree) sequence log-probs on the tiny model."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from PIL import Image

from mcmdpo.method.logprobs import (
    PreferenceTokens,
    build_preference_tokens,
    build_tree_row,
    naive_logprobs,
    parse_condition,
    sequence_logprobs,
    shared_logprobs,
    tree_attention_mask,
)
from mcmdpo.method.losses import CONDITIONS
from mcmdpo.method.model import build_tiny_llava, encode_images, image_encoder_outputs, load_llava

TEXTS = [
    "Given an image and context, generate alt-text for the image.\nContext:\nA sunny day at the beach.",
    "A brown dog runs along the shore with a red ball.",
    "Two people hike up a snowy mountain trail at dawn.",
]
INSTRUCTION = "Given an image and context, generate alt-text.\nContext:\n"
# (question_w, question_l, chosen, rejected, size of m_w, size of m_l): every length differs
SAMPLES = [
    (
        INSTRUCTION + "beach day",
        "Context:\nmountain hike today",
        "A dog on a beach.",
        "A cat.",
        (80, 50),
        (56, 56),
    ),
    (
        "Context:\nsnow",
        INSTRUCTION + "a long other post text here",
        "Two hikers.",
        "A much longer rejected answer about a red ball and the shore.",
        (40, 90),
        (70, 50),
    ),
    ("Describe.", "Context:\nsun", "Sunny shore with people walking.", "Snow.", (60, 60), (90, 40)),
]
TOL = 1e-5


def noise_image(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny"), TEXTS)


@pytest.fixture(scope="module")
def model_and_processor(tiny_dir):
    return load_llava(tiny_dir, mode="pad", train_vision_tower=True)


def make_batch(processor, mode: str) -> list[PreferenceTokens]:
    return [
        build_preference_tokens(
            processor,
            question_w=qw,
            question_l=ql,
            chosen=yw,
            rejected=yl,
            image_w=noise_image(2 * i, sw),
            image_l=noise_image(2 * i + 1, sl),
            mode=mode,
        )
        for i, (qw, ql, yw, yl, sw, sl) in enumerate(SAMPLES)
    ]


@pytest.fixture(scope="module")
def pad_batch(model_and_processor):
    return make_batch(model_and_processor[1], "pad")


def grads(model, logps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    # distinct weights per condition so that a swapped condition would show in the gradients
    sum((k + 1) * v.sum() for k, v in enumerate(logps.values())).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_engines_agree(naive: dict, shared: dict) -> None:
    assert list(naive) == list(shared) == list(CONDITIONS)
    for name in CONDITIONS:
        assert naive[name].shape == shared[name].shape == (len(SAMPLES),)
        diff = (naive[name] - shared[name]).abs().max().item()
        assert diff <= TOL, f"{name}: |naive - shared| = {diff:.3g}"


def test_batch_has_different_lengths(pad_batch):
    assert len({len(s.context_w) for s in pad_batch}) == len(pad_batch)
    assert len({len(s.answer_l) for s in pad_batch}) == len(pad_batch)


def test_engines_agree_pad(model_and_processor, pad_batch):
    model, _ = model_and_processor
    with torch.no_grad():
        naive = naive_logprobs(model, pad_batch, mode="pad")
        shared = shared_logprobs(model, pad_batch, mode="pad")
    assert_engines_agree(naive, shared)
    # the conditions really differ (a mask that leaked across branches would blur them)
    values = torch.stack([shared[c] for c in CONDITIONS])
    assert values.unique().numel() == values.numel()


def test_engines_agree_anyres(model_and_processor):
    model, processor = model_and_processor
    batch = make_batch(processor, "anyres")
    assert batch[0].image_tokens_w != batch[0].image_tokens_l  # different tilings in one tree
    with torch.no_grad():
        assert_engines_agree(
            naive_logprobs(model, batch, mode="anyres"), sequence_logprobs(model, batch, mode="anyres")
        )


@pytest.mark.parametrize("train_vision_tower", [True, False])
def test_gradients_agree(tiny_dir, pad_batch, train_vision_tower):
    model, _ = load_llava(tiny_dir, mode="pad", train_vision_tower=train_vision_tower)
    naive = grads(model, naive_logprobs(model, pad_batch))
    shared = grads(model, shared_logprobs(model, pad_batch))
    assert naive.keys() == shared.keys()
    tower = [n for n in naive if "vision_tower" in n]
    assert bool(tower) == train_vision_tower
    scale = max(g.abs().max().item() for g in naive.values())
    for name in naive:
        diff = (naive[name] - shared[name]).abs().max().item()
        assert diff <= TOL * max(1.0, scale), f"{name}: {diff:.3g} (grad scale {scale:.3g})"
    if train_vision_tower:
        assert all(naive[n].abs().sum() > 0 for n in tower)


def test_gradient_checkpointing_gives_same_gradients(tiny_dir, pad_batch):
    plain, _ = load_llava(tiny_dir, train_vision_tower=True)
    checkpointed, _ = load_llava(tiny_dir, train_vision_tower=True, gradient_checkpointing=True)
    checkpointed.train()
    expected = grads(plain, shared_logprobs(plain, pad_batch))
    got = grads(checkpointed, shared_logprobs(checkpointed, pad_batch))
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-5)


def test_answer_only_sums_with_uniform_head(model_and_processor, pad_batch):
    model = copy.deepcopy(model_and_processor[0])
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every next-token distribution is uniform: log p = -log V
    log_v = math.log(model.config.text_config.vocab_size)
    for engine in ("naive", "shared"):
        with torch.no_grad():
            out = sequence_logprobs(model, pad_batch, engine=engine)
        for name in CONDITIONS:
            y = parse_condition(name)[2]
            expected = [-len(s.answer(y)) * log_v for s in pad_batch]
            assert out[name].tolist() == pytest.approx(expected, abs=1e-9), (engine, name)


def test_answer_only_sum_matches_single_sequence(model_and_processor, pad_batch):
    """One unpadded sequence per condition, log-probs summed by a plain loop over the answer."""
    model, _ = model_and_processor
    sample = pad_batch[1]
    with torch.no_grad():
        shared = shared_logprobs(model, [sample])
        for name in ("mw_cw_yw", "ml_cl_yl"):
            m, c, y = parse_condition(name)
            pixels, size, n_img = sample.image(m)
            prompt = [*sample.prefix, *[model.config.image_token_id] * n_img, *sample.context(c)]
            ids = torch.tensor([[*prompt, *sample.answer(y)]])
            features = encode_images(model, [pixels], [size], "pad")
            logits = model(input_ids=ids, mm_encoder_outputs=image_encoder_outputs(features)).logits[0]
            logps = torch.log_softmax(logits.double(), dim=-1)
            total = sum(float(logps[t - 1, ids[0, t]]) for t in range(len(prompt), ids.shape[1]))
            assert float(shared[name][0]) == pytest.approx(total, abs=TOL)


def test_subset_of_conditions(model_and_processor, pad_batch):
    model, _ = model_and_processor
    subset = ("mw_cw_yw", "mw_cw_yl", "ml_cw_yw")
    with torch.no_grad():
        full = shared_logprobs(model, pad_batch)
        part = shared_logprobs(model, pad_batch, conditions=subset)
    assert list(part) == list(subset)
    for name in subset:
        assert (part[name] - full[name]).abs().max().item() <= TOL


def test_builder_accepts_preprocessed_pixels(model_and_processor):
    """The precompute stage passes noised pixel tensors, not PIL images, for the rejected image."""
    _, processor = model_and_processor
    noised = {"pixel_values": torch.zeros(1, 3, 56, 56), "image_size": (56, 56)}
    sample = build_preference_tokens(
        processor, question_w="q", question_l="r", chosen="a", rejected="b",
        image_w=noise_image(0, (60, 40)), image_l=noised,
    )  # fmt: skip
    assert sample.pixels_l is noised["pixel_values"]
    assert sample.image_tokens_w == sample.image_tokens_l == 16
    assert sample.answer_w[-1] == processor.tokenizer.eos_token_id


def test_tree_row_layout(pad_batch):
    sample = pad_batch[0]
    row = build_tree_row(sample, CONDITIONS, image_token_id=4)
    expected = (
        len(sample.prefix)
        + sample.image_tokens_w
        + sample.image_tokens_l
        + 2 * (len(sample.context_w) + len(sample.context_l))
        + 4 * (len(sample.answer_w) + len(sample.answer_l))
    )
    assert len(row.ids) == expected
    assert len(row.parents) == 1 + 2 + 4 + 8
    assert len(row.images) == 2 and len(row.answers) == 8


def test_tree_mask_shows_each_token_its_naive_sequence(pad_batch):
    """Independent check of mask + positions: the visible keys of every token, ordered by position,
    are exactly the tokens of the naive sequence that precede it."""
    image_id = 4
    rows = [build_tree_row(s, CONDITIONS, image_id) for s in pad_batch[:2]]
    width = max(len(r.ids) for r in rows) + 3
    mask = tree_attention_mask(rows, width)
    for b, (row, sample) in enumerate(zip(rows, pad_batch[:2], strict=True)):
        sequences = []
        for name in CONDITIONS:
            m, c, y = parse_condition(name)
            n_img = sample.image(m)[2]
            sequences.append([*sample.prefix, *[image_id] * n_img, *sample.context(c), *sample.answer(y)])
        for i in range(len(row.ids)):
            keys = mask[b, 0, i].nonzero().flatten().tolist()
            seen = sorted((row.positions[j], row.ids[j]) for j in keys)
            assert [p for p, _ in seen] == list(range(row.positions[i] + 1)), i
            tokens = [t for _, t in seen]
            assert any(seq[: len(tokens)] == tokens for seq in sequences), i
        for i in range(len(row.ids), width):  # padding sees only itself
            assert mask[b, 0, i].nonzero().flatten().tolist() == [i]
