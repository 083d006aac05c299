"""Loss math against independent scalar formulas written with math.log / math.exp on floats."""

from __future__ import annotations

import math
import random

import pytest
import torch

from mcmdpo.method.losses import CONDITIONS, TERMS, dpo_loss, mcmdpo_loss, mdpo_loss, resolve_weights

BETA = 0.1
B = 4
PAPER_WEIGHTS = {"rpo": 1.0, "vpo": 0.5, "cpo": 0.5, "vrpo": 0.2, "crpo": 0.2, "vcpo": 0.2, "mtppo": 0.2}


def neg_log_sigmoid(x: float) -> float:
    return math.log(1.0 + math.exp(-x))


def scalar_h(policy: dict, reference: dict, name: str, i: int) -> float:
    return float(policy[name][i]) - float(reference[name][i])


def scalar_margin(policy: dict, reference: dict, term: str, i: int) -> float:
    return scalar_h(policy, reference, "mw_cw_yw", i) - scalar_h(policy, reference, TERMS[term], i)


def scalar_paper(policy: dict, reference: dict, weights: dict, i: int, beta: float = BETA) -> float:
    return sum(w * neg_log_sigmoid(beta * scalar_margin(policy, reference, t, i)) for t, w in weights.items())


def scalar_upstream(
    policy: dict, reference: dict, weights: dict, i: int, beta: float = BETA, norm: float = 2.8
) -> float:
    # upstream divides by the fixed para_norm (2.8), whatever terms are active (see tests/test_parity.py)
    fused = sum(w / norm * scalar_margin(policy, reference, t, i) for t, w in weights.items())
    return neg_log_sigmoid(beta * fused)


@pytest.fixture
def logps() -> tuple[dict, dict]:
    rng = random.Random(0)
    policy = {
        c: torch.tensor([rng.uniform(-80, -10) for _ in range(B)], dtype=torch.float64) for c in CONDITIONS
    }
    reference = {
        c: torch.tensor([rng.uniform(-80, -10) for _ in range(B)], dtype=torch.float64) for c in CONDITIONS
    }
    return policy, reference


def assert_per_sample(loss: torch.Tensor, expected: list[float]) -> None:
    assert loss.shape == (B,)
    assert loss.tolist() == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("term", list(TERMS))
def test_each_term_alone(logps, term):
    policy, reference = logps
    only = {t: (1.0 if t == term else 0.0) for t in TERMS}
    out = mcmdpo_loss(policy, reference, beta=BETA, weights=only)
    expected = [neg_log_sigmoid(BETA * scalar_margin(policy, reference, term, i)) for i in range(B)]
    assert_per_sample(out.loss, expected)
    assert out.metrics[f"{term}/margin"].tolist() == pytest.approx(
        [scalar_margin(policy, reference, term, i) for i in range(B)]
    )
    assert set(k.split("/")[0] for k in out.metrics) == {term, "rewards"}


def test_paper_form_default_weights(logps):
    policy, reference = logps
    out = mcmdpo_loss(policy, reference)
    assert_per_sample(out.loss, [scalar_paper(policy, reference, PAPER_WEIGHTS, i) for i in range(B)])


def test_upstream_form_default_weights(logps):
    policy, reference = logps
    out = mcmdpo_loss(policy, reference, form="upstream")
    assert sum(PAPER_WEIGHTS.values()) == pytest.approx(2.8)
    assert_per_sample(out.loss, [scalar_upstream(policy, reference, PAPER_WEIGHTS, i) for i in range(B)])


def test_forms_differ(logps):
    policy, reference = logps
    paper = mcmdpo_loss(policy, reference, form="paper").loss
    upstream = mcmdpo_loss(policy, reference, form="upstream").loss
    assert not torch.allclose(paper, upstream)


def test_beta_is_used(logps):
    policy, reference = logps
    out = mcmdpo_loss(policy, reference, beta=0.5)
    assert_per_sample(
        out.loss, [scalar_paper(policy, reference, PAPER_WEIGHTS, i, beta=0.5) for i in range(B)]
    )


@pytest.mark.parametrize(
    ("drop", "removed"),
    [
        ("single", {"rpo", "vpo", "cpo"}),
        ("pair", {"vrpo", "crpo", "vcpo"}),
        ("multi", {"mtppo"}),
        ("pair+cpo", {"vrpo", "crpo", "vcpo", "cpo"}),
        (("Pair", "Multi"), {"vrpo", "crpo", "vcpo", "mtppo"}),
    ],
)
@pytest.mark.parametrize("form", ["paper", "upstream"])
def test_ablations(logps, drop, removed, form):
    policy, reference = logps
    kept = {t: w for t, w in PAPER_WEIGHTS.items() if t not in removed}
    out = mcmdpo_loss(policy, reference, drop=drop, form=form)
    scalar = scalar_paper if form == "paper" else scalar_upstream
    assert_per_sample(out.loss, [scalar(policy, reference, kept, i) for i in range(B)])
    assert not any(f"{t}/margin" in out.metrics for t in removed)


def test_group_weights(logps):
    policy, reference = logps
    out = mcmdpo_loss(policy, reference, lambda_=2.0, alpha=0.3, gamma=0.4)
    weights = {"rpo": 2.0, "vpo": 0.3, "cpo": 0.3, "vrpo": 0.4, "crpo": 0.4, "vcpo": 0.4, "mtppo": 0.4}
    assert_per_sample(out.loss, [scalar_paper(policy, reference, weights, i) for i in range(B)])


def test_term_weights_override_groups(logps):
    policy, reference = logps
    out = mcmdpo_loss(policy, reference, gamma=0.1, weights={"mtppo": 0.7}, form="upstream")
    weights = {**PAPER_WEIGHTS, "vrpo": 0.1, "crpo": 0.1, "vcpo": 0.1, "mtppo": 0.7}
    assert_per_sample(out.loss, [scalar_upstream(policy, reference, weights, i) for i in range(B)])


def test_weight_errors():
    with pytest.raises(ValueError, match="rpx"):
        resolve_weights({"rpx": 1.0})
    with pytest.raises(ValueError, match="bogus"):
        resolve_weights(drop=["bogus"])
    with pytest.raises(ValueError, match=">= 0"):
        resolve_weights({"rpo": -1.0})
    with pytest.raises(ValueError, match="every term"):
        resolve_weights(drop=["single", "pair", "multi"])


def test_unknown_form(logps):
    with pytest.raises(ValueError, match="form"):
        mcmdpo_loss(*logps, form="fused")


def test_dpo(logps):
    policy, reference = logps
    out = dpo_loss(policy, reference, beta=BETA)
    assert_per_sample(
        out.loss, [neg_log_sigmoid(BETA * scalar_margin(policy, reference, "rpo", i)) for i in range(B)]
    )
    chosen = [BETA * scalar_h(policy, reference, "mw_cw_yw", i) for i in range(B)]
    rejected = [BETA * scalar_h(policy, reference, "mw_cw_yl", i) for i in range(B)]
    assert out.metrics["rewards/chosen"].tolist() == pytest.approx(chosen)
    assert out.metrics["rewards/rejected"].tolist() == pytest.approx(rejected)
    assert out.metrics["rewards/accuracy"].tolist() == [
        float(c > r) for c, r in zip(chosen, rejected, strict=True)
    ]


def test_dpo_needs_only_two_conditions(logps):
    policy, reference = logps
    keep = ("mw_cw_yw", "mw_cw_yl")
    out = dpo_loss({k: policy[k] for k in keep}, {k: reference[k] for k in keep})
    assert torch.equal(out.loss, dpo_loss(policy, reference).loss)


def test_mdpo(logps):
    policy, reference = logps
    out = mdpo_loss(policy, reference, beta=BETA)
    expected = [
        neg_log_sigmoid(BETA * scalar_margin(policy, reference, "rpo", i))
        + neg_log_sigmoid(BETA * scalar_margin(policy, reference, "vpo", i))
        + neg_log_sigmoid(BETA * scalar_h(policy, reference, "mw_cw_yw", i))
        for i in range(B)
    ]
    assert_per_sample(out.loss, expected)
    assert {"dpo/loss", "image/loss", "anchor/loss", "rewards/chosen"} <= set(out.metrics)


def test_rewards_and_accuracies(logps):
    policy, reference = logps
    out = mcmdpo_loss(policy, reference, drop="single")  # rewards still reported from mw_cw_yl
    chosen = [BETA * scalar_h(policy, reference, "mw_cw_yw", i) for i in range(B)]
    rejected = [BETA * scalar_h(policy, reference, "mw_cw_yl", i) for i in range(B)]
    assert out.metrics["rewards/chosen"].tolist() == pytest.approx(chosen)
    assert out.metrics["rewards/rejected"].tolist() == pytest.approx(rejected)
    for term in ("vrpo", "mtppo"):
        margins = [scalar_margin(policy, reference, term, i) for i in range(B)]
        assert out.metrics[f"{term}/accuracy"].tolist() == [float(m > 0) for m in margins]


def test_missing_conditions_are_named(logps):
    policy, reference = logps
    partial = {k: v for k, v in policy.items() if k not in ("ml_cl_yl", "ml_cw_yw")}
    with pytest.raises(ValueError, match=r"ml_cw_yw.*ml_cl_yl") as err:
        mcmdpo_loss(partial, reference)
    assert "policy" in str(err.value)
    with pytest.raises(ValueError, match="ml_cw_yw"):
        mdpo_loss(partial, reference)
    # a dropped term no longer needs its condition
    mcmdpo_loss(partial, reference, weights={"vpo": 0.0, "mtppo": 0.0})


def test_shape_mismatch(logps):
    policy, reference = logps
    bad = {**policy, "mw_cw_yl": policy["mw_cw_yl"][:2]}
    with pytest.raises(ValueError, match="1-D"):
        dpo_loss(bad, reference)


def test_dpo_gradient_matches_analytic():
    chosen = torch.tensor([-20.0, -35.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-25.0, -30.0], dtype=torch.float64, requires_grad=True)
    ref_chosen, ref_rejected = [-22.0, -33.0], [-24.0, -31.0]
    reference = {"mw_cw_yw": torch.tensor(ref_chosen), "mw_cw_yl": torch.tensor(ref_rejected)}
    dpo_loss({"mw_cw_yw": chosen, "mw_cw_yl": rejected}, reference, beta=BETA).loss.sum().backward()
    values_w, values_l = chosen.tolist(), rejected.tolist()
    for i in range(2):
        margin = (values_w[i] - ref_chosen[i]) - (values_l[i] - ref_rejected[i])
        slope = BETA / (1.0 + math.exp(BETA * margin))  # d/dm of -log sigmoid(beta m) is -slope
        assert float(chosen.grad[i]) == pytest.approx(-slope)
        assert float(rejected.grad[i]) == pytest.approx(slope)


@pytest.mark.parametrize("form", ["paper", "upstream"])
def test_gradient_directions_and_autograd(logps, form):
    policy, reference = logps
    policy = {k: v.clone().requires_grad_(True) for k, v in policy.items()}
    mcmdpo_loss(policy, reference, form=form).loss.sum().backward()
    assert (policy["mw_cw_yw"].grad < 0).all()  # raising the chosen log-prob lowers the loss
    for cond in TERMS.values():
        assert (policy[cond].grad > 0).all()
    args = tuple(v[:2].detach().clone().requires_grad_(True) for v in policy.values())

    def fn(*xs):
        return mcmdpo_loss(
            dict(zip(policy, xs, strict=True)), {k: v[:2] for k, v in reference.items()}, form=form
        ).loss

    assert torch.autograd.gradcheck(fn, args)


def test_extreme_margins_are_finite():
    big = torch.tensor([1e4, -1e4], dtype=torch.float32, requires_grad=True)
    zero = torch.zeros(2)
    policy = {c: (big if c == "mw_cw_yw" else zero) for c in CONDITIONS}
    reference = {c: zero for c in CONDITIONS}
    for form in ("paper", "upstream"):
        loss = mcmdpo_loss(policy, reference, form=form).loss
        assert torch.isfinite(loss).all()
        assert float(loss[0].detach()) == pytest.approx(0.0, abs=1e-6)
        loss.sum().backward()
        assert torch.isfinite(big.grad).all()
