"""The hallucination variant (paper appendix A): RLHF-V's parquet layout, no context, so only RPO,
VPO and VRPO; the log-prob engines then compute 4 sequences per sample, not 8."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from mcmdpo.method.data.records import load_records
from mcmdpo.method.losses import PreferenceLoss
from mcmdpo.method.train.spec import LossSpec
from mcmdpo.smoke import fixtures

HALLUCINATION = ("mw_cw_yw", "mw_cw_yl", "ml_cw_yw", "ml_cw_yl")


def test_the_context_group_leaves_exactly_rpo_vpo_vrpo_and_four_conditions():
    loss = PreferenceLoss.from_spec(LossSpec(kind="mcmdpo", drop=("context",)))
    assert dict(loss.weights) == {"rpo": 1.0, "vpo": 0.5, "vrpo": 0.2}
    assert loss.conditions == HALLUCINATION
    full = PreferenceLoss.from_spec(LossSpec(kind="mcmdpo"))
    assert len(full.conditions) == 8 and set(full.weights) - set(loss.weights) == {
        "cpo",
        "crpo",
        "vcpo",
        "mtppo",
    }
    assert PreferenceLoss.from_spec(LossSpec(kind="mcmdpo", drop=("-Context",))).weights == loss.weights
    assert (
        PreferenceLoss.from_spec(LossSpec(kind="mcmdpo", drop=("context",), gamma=0.4)).weights["vrpo"] == 0.4
    )


def test_the_variant_loss_is_the_three_terms_by_hand():
    loss = PreferenceLoss.from_spec(LossSpec(kind="mcmdpo", drop=("context",), beta=0.1))
    policy = {
        c: torch.tensor([-10.0 - k, -3.0 + k], dtype=torch.float64) for k, c in enumerate(HALLUCINATION)
    }
    reference = {
        c: torch.tensor([-11.0, -2.5 + 0.5 * k], dtype=torch.float64) for k, c in enumerate(HALLUCINATION)
    }
    result = loss(policy, reference)
    for b in range(2):
        h = {c: float(policy[c][b] - reference[c][b]) for c in HALLUCINATION}

        expected = sum(
            w * -math.log(1 / (1 + math.exp(-0.1 * (h["mw_cw_yw"] - h[rejected]))))
            for w, rejected in ((1.0, "mw_cw_yl"), (0.5, "ml_cw_yw"), (0.2, "ml_cw_yl"))
        )
        assert float(result.loss[b]) == pytest.approx(expected, rel=1e-12)
    assert {k.split("/")[0] for k in result.metrics} == {"rpo", "vpo", "vrpo", "rewards"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    from mcmdpo.method.model import build_tiny_llava
    from mcmdpo.method.model.load import load_llava

    path = build_tiny_llava(tmp_path_factory.mktemp("m") / "m", ["a dog on grass", "Describe this image."])
    return load_llava(path, dtype=torch.float32)


def samples(processor, n: int):
    from mcmdpo.method.logprobs import build_preference_tokens

    out = []
    for i in range(n):
        image = Image.new("RGB", (40 + i, 30), (10 * i, 90, 40))
        out.append(build_preference_tokens(
            processor, question_w=fixtures.NO_CONTEXT_QUESTION, question_l="Another question.",
            chosen="a dog on grass", rejected="a cat", image_w=image, image_l=image.rotate(30)
        ))  # fmt: skip
    return out


def test_engines_compute_four_sequences_for_the_variant(tiny, monkeypatch):
    import mcmdpo.method.logprobs as logprobs

    model, processor = tiny
    batch = samples(processor, 3)
    conditions = PreferenceLoss.from_spec(LossSpec(kind="mcmdpo", drop=("context",))).conditions
    rows: list[int] = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["inputs_embeds"].shape[0]), with_kwargs=True
    )
    trees: list = []
    build = logprobs.build_tree_row
    monkeypatch.setattr(logprobs, "build_tree_row", lambda *a: trees.append(build(*a)) or trees[-1])
    try:
        with torch.no_grad():
            naive = logprobs.naive_logprobs(model, batch, conditions=conditions)
            shared = logprobs.shared_logprobs(model, batch, conditions=conditions)
            logprobs.naive_logprobs(model, batch)  # the full loss, for comparison
    finally:
        hook.remove()
    assert rows == [3 * 4, 3, 3 * 8]  # naive: one row per (sample, condition); shared: one row per sample
    assert [len(t.answers) for t in trees] == [4, 4, 4] and [len(t.images) for t in trees] == [2, 2, 2]
    contexts = len(batch[0].context_w)
    assert len(trees[0].ids) == (
        len(batch[0].prefix)
        + batch[0].image_tokens_w
        + batch[0].image_tokens_l
        + 2 * contexts
        + 2 * (len(batch[0].answer_w) + len(batch[0].answer_l))
    )  # fmt: skip - one context per image: c_l is never laid out
    for c in conditions:
        assert torch.allclose(naive[c], shared[c], atol=1e-5)


def test_rlhfv_parquet_layout_is_read_by_the_preference_reader(tmp_path: Path):
    files = fixtures.preference_files(tmp_path, 3, "parquet", context=False)
    records = load_records(files["file"], "train")
    assert [r.problem for r in records] == [None] * 3
    assert records[0].image_bytes is not None and records[0].question == fixtures.NO_CONTEXT_QUESTION
    assert records[0].chosen and records[0].rejected and records[0].id == 1000
