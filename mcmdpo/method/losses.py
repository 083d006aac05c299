"""Preference losses: DPO, mDPO and MCM-DPO on per-sample sequence log-probs.

A public API that needs no trainer. ``policy`` and ``reference`` map condition names to 1-D tensors of
per-sample sequence log-probs (sums over answer tokens). A condition ``m?_c?_y?`` names the image
(``mw`` chosen / ``ml`` rejected), the context (``cw`` / ``cl``) and the answer (``yw`` / ``yl``).

With the log-ratio ``h(m, c, y) = log pi_theta(y | x, m, c) - log pi_ref(y | x, m, c)``, every term
compares the chosen triple ``(mw, cw, yw)`` with one rejected triple::

    margin_k = h(mw, cw, yw) - h(rejected_k)          L_k = -log sigmoid(beta * margin_k)

    term   rejected     default weight          term   rejected     default weight
    rpo    mw_cw_yl     lambda = 1.0            crpo   mw_cl_yl     gamma = 0.2
    vpo    ml_cw_yw     alpha  = 0.5            vcpo   ml_cl_yw     gamma = 0.2
    cpo    mw_cl_yw     alpha  = 0.5            mtppo  ml_cl_yl     gamma = 0.2
    vrpo   ml_cw_yl     gamma  = 0.2

Every function returns a :class:`LossResult`: the per-sample loss ``[B]`` and detached per-sample
metrics ``{term}/loss``, ``{term}/margin`` (``h_w - h_l``, without beta), ``{term}/accuracy``
(margin > 0) and ``rewards/chosen = beta * h(mw, cw, yw)``, ``rewards/rejected = beta * h(mw, cw, yl)``,
``rewards/margin``, ``rewards/accuracy``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
import torch.nn.functional as F

from mcmdpo.method.conditions import (
    ABLATIONS,
    CHOSEN,
    CONDITIONS,
    DEFAULT_GROUP_WEIGHTS,
    TERMS,
    WEIGHT_GROUPS,
    ablation_key,
)

if TYPE_CHECKING:
    from mcmdpo.method.train.spec import LossSpec

Form = Literal["paper", "upstream"]
Conditions = Mapping[str, torch.Tensor]

UPSTREAM_NORM = 2.8
"""Upstream's ``para_norm`` (``--para_norm 2.8`` in ``scripts/mcmdpo.sh``; the flag's default too): the
fixed divisor of the upstream form, whatever terms are active or however gamma is swept."""


class LossResult(NamedTuple):
    """Per-sample loss ``[B]`` and detached per-sample metrics (each ``[B]``)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


def dpo_loss(policy: Conditions, reference: Conditions, *, beta: float = 0.1) -> LossResult:
    """DPO: ``L = -log sigmoid(beta * (h(mw, cw, yw) - h(mw, cw, yl)))`` (the RPO term alone)."""
    h = log_ratios(policy, reference, [CHOSEN, TERMS["rpo"]], loss_name="dpo_loss")
    loss, metrics = preference_term("dpo", h[CHOSEN], h[TERMS["rpo"]], beta)
    metrics.update(reward_metrics(h, beta))
    return LossResult(loss, metrics)


def mdpo_loss(
    policy: Conditions,
    reference: Conditions,
    *,
    beta: float = 0.1,
    image_weight: float = 1.0,
    anchor_weight: float = 1.0,
    anchor_delta: float = 0.0,
) -> LossResult:
    """mDPO = DPO + conditional image term + anchor::

    L = -log sigmoid(beta * (h(mw, cw, yw) - h(mw, cw, yl)))                 # dpo
        + image_weight  * -log sigmoid(beta * (h(mw, cw, yw) - h(ml, cw, yw)))  # image
        + anchor_weight * -log sigmoid(beta * h(mw, cw, yw) - anchor_delta)     # anchor
    """
    needed = [CHOSEN, TERMS["rpo"], TERMS["vpo"]]
    h = log_ratios(policy, reference, needed, loss_name="mdpo_loss")
    dpo, metrics = preference_term("dpo", h[CHOSEN], h[TERMS["rpo"]], beta)
    image, image_metrics = preference_term("image", h[CHOSEN], h[TERMS["vpo"]], beta)
    anchor = -F.logsigmoid(beta * h[CHOSEN] - anchor_delta)
    metrics.update(image_metrics)
    metrics.update(_term_metrics("anchor", anchor, h[CHOSEN]))
    metrics.update(reward_metrics(h, beta))
    return LossResult(dpo + image_weight * image + anchor_weight * anchor, metrics)


def mcmdpo_loss(
    policy: Conditions,
    reference: Conditions,
    *,
    beta: float = 0.1,
    weights: Mapping[str, float] | None = None,
    lambda_: float | None = None,
    alpha: float | None = None,
    gamma: float | None = None,
    form: Form = "paper",
    drop: Iterable[str] = (),
    norm: float | None = None,
) -> LossResult:
    """MCM-DPO over the seven terms (see the module docstring for terms and default weights).

    ``form="paper"`` (Eq. 2): ``L = sum_k w_k * -log sigmoid(beta * margin_k)``.
    ``form="upstream"`` (authors' code): ``L = -log sigmoid(beta * sum_k (w_k / norm) * margin_k)``
    with a fixed ``norm`` (default :data:`UPSTREAM_NORM` = 2.8, upstream's ``para_norm``): dropping
    terms (Table 7) or sweeping gamma (Table 8) does not change it, as upstream. ``norm`` is refused
    with ``form="paper"``, which has no divisor.

    Weights: defaults ``lambda=1, alpha=0.5, gamma=0.2``; ``lambda_``/``alpha``/``gamma`` set a group,
    then ``weights`` (term name -> weight) overrides single terms. ``drop`` removes ablation groups
    (``single``, ``pair``, ``multi``, ``pair+cpo``; paper Table 7) or term names. Terms with weight 0
    are inactive: their conditions are not needed.
    """
    active = resolve_weights(weights, lambda_=lambda_, alpha=alpha, gamma=gamma, drop=drop)
    return weighted_terms(policy, reference, active, beta=beta, form=form, norm=norm)


def weighted_terms(
    policy: Conditions,
    reference: Conditions,
    active: Mapping[str, float],
    *,
    beta: float,
    form: Form,
    norm: float | None = None,
) -> LossResult:
    """MCM-DPO with already resolved term weights (:func:`resolve_weights`); see :func:`mcmdpo_loss`."""
    norm = resolve_norm(form, norm)
    h = log_ratios(policy, reference, [CHOSEN, *(TERMS[t] for t in active)], loss_name="mcmdpo_loss")
    metrics: dict[str, torch.Tensor] = {}
    term_losses = {}
    for term in active:
        term_losses[term], term_metrics = preference_term(term, h[CHOSEN], h[TERMS[term]], beta)
        metrics.update(term_metrics)
    metrics.update(reward_metrics(_with_rejected(h, policy, reference), beta))
    if norm is None:
        return LossResult(sum(active[t] * term_losses[t] for t in active), metrics)
    fused = sum((active[t] / norm) * (h[CHOSEN] - h[TERMS[t]]) for t in active)
    return LossResult(-F.logsigmoid(beta * fused), metrics)


def resolve_norm(form: Form | str, norm: float | None) -> float | None:
    """The divisor of the upstream form (``norm``, default 2.8); None for the paper form.

    Raises ValueError for an unknown form, a non-positive norm, or a norm with ``form="paper"``.
    """
    if form not in ("paper", "upstream"):
        raise ValueError(f"form must be 'paper' or 'upstream' (got {form!r})")
    if form == "paper":
        if norm is not None:
            raise ValueError("norm applies only to form='upstream' (the paper form has no divisor)")
        return None
    norm = UPSTREAM_NORM if norm is None else float(norm)
    if not norm > 0:
        raise ValueError(f"norm must be > 0 (got {norm})")
    return norm


def _with_rejected(h: dict[str, torch.Tensor], policy: Conditions, reference: Conditions) -> dict:
    """Add ``h(mw, cw, yl)`` for the reported rejected reward when RPO is dropped but it is available."""
    name = TERMS["rpo"]
    if name in h or name not in policy or name not in reference:
        return h
    return {**h, name: policy[name] - reference[name].to(policy[name].dtype)}


def resolve_weights(
    weights: Mapping[str, float] | None = None,
    *,
    lambda_: float | None = None,
    alpha: float | None = None,
    gamma: float | None = None,
    drop: Iterable[str] = (),
) -> dict[str, float]:
    """Active terms and their weights, in the canonical term order (weight 0 = inactive)."""
    groups = dict(DEFAULT_GROUP_WEIGHTS)
    for name, value in (("lambda", lambda_), ("alpha", alpha), ("gamma", gamma)):
        if value is not None:
            groups[name] = float(value)
    resolved = {t: groups[g] for g, members in WEIGHT_GROUPS.items() for t in members}
    _check_names(weights or {}, TERMS, "weights")
    resolved.update({t: float(w) for t, w in (weights or {}).items()})
    for term in dropped_terms(drop):
        resolved[term] = 0.0
    if any(w < 0 for w in resolved.values()):
        raise ValueError(f"term weights must be >= 0 (got {resolved})")
    active = {t: resolved[t] for t in TERMS if resolved[t] > 0}
    if not active:
        raise ValueError("mcmdpo_loss: every term is dropped or has weight 0")
    return active


def dropped_terms(drop: Iterable[str]) -> set[str]:
    """Expand ablation group names (``single``, ``pair``, ``multi``, ``pair+cpo``) and term names."""
    if isinstance(drop, str):
        drop = [drop]
    out: set[str] = set()
    for name in drop:
        key = ablation_key(name)
        if key in ABLATIONS:
            out.update(ABLATIONS[key])
        elif key in TERMS:
            out.add(key)
        else:
            valid = sorted([*ABLATIONS, *TERMS])
            raise ValueError(f"drop: unknown group or term {name!r}; valid: {', '.join(valid)}")
    return out


def log_ratios(
    policy: Conditions, reference: Conditions, names: Iterable[str], *, loss_name: str
) -> dict[str, torch.Tensor]:
    """``h = policy - reference`` for ``names``; a ValueError names every missing condition."""
    names = list(dict.fromkeys(names))
    missing = [
        f"{side}[{n!r}]"
        for side, d in (("policy", policy), ("reference", reference))
        for n in names
        if n not in d
    ]
    if missing:
        raise ValueError(f"{loss_name}: missing conditions {', '.join(missing)} (needs {', '.join(names)})")
    shapes = {tuple(d[n].shape) for d in (policy, reference) for n in names}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"{loss_name}: log-probs must be 1-D tensors of one shape (got {sorted(shapes)})")
    return {n: policy[n] - reference[n].to(policy[n].dtype) for n in names}


def preference_term(
    name: str, h_chosen: torch.Tensor, h_rejected: torch.Tensor, beta: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``-log sigmoid(beta * (h_chosen - h_rejected))`` per sample, with its metrics."""
    margin = h_chosen - h_rejected
    loss = -F.logsigmoid(beta * margin)
    return loss, _term_metrics(name, loss, margin)


def reward_metrics(h: Mapping[str, torch.Tensor], beta: float) -> dict[str, torch.Tensor]:
    """Reported rewards: ``beta * h(mw, cw, yw)`` (chosen) and ``beta * h(mw, cw, yl)`` (rejected)."""
    chosen = (beta * h[CHOSEN]).detach()
    out = {"rewards/chosen": chosen}
    if TERMS["rpo"] in h:
        rejected = (beta * h[TERMS["rpo"]]).detach()
        out.update(
            {
                "rewards/rejected": rejected,
                "rewards/margin": chosen - rejected,
                "rewards/accuracy": (chosen > rejected).to(chosen.dtype),
            }
        )
    return out


def _term_metrics(name: str, loss: torch.Tensor, margin: torch.Tensor) -> dict[str, torch.Tensor]:
    margin = margin.detach()
    return {
        f"{name}/loss": loss.detach(),
        f"{name}/margin": margin,
        f"{name}/accuracy": (margin > 0).to(margin.dtype),
    }


def _check_names(given: Mapping[str, float], valid: Mapping[str, str], what: str) -> None:
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ValueError(f"{what}: unknown term(s) {', '.join(unknown)}; valid: {', '.join(valid)}")


@dataclass(frozen=True)
class PreferenceLoss:
    """The loss of a ``[preference.loss]`` section, resolved once (weights, needed conditions).

    ``loss(policy, reference)`` dispatches to :func:`dpo_loss`, :func:`mdpo_loss` or, for MCM-DPO,
    :func:`weighted_terms` with the weights resolved here (not per micro-batch).
    """

    kind: str
    beta: float
    form: Form = "paper"
    weights: Mapping[str, float] = field(default_factory=dict)
    mdpo: Mapping[str, float] = field(default_factory=dict)
    norm: float | None = None

    @classmethod
    def from_spec(cls, spec: LossSpec) -> PreferenceLoss:
        """From a ``LossSpec`` (:mod:`mcmdpo.method.train.spec`)."""
        mdpo = {k: getattr(spec, k) for k in ("image_weight", "anchor_weight", "anchor_delta")}
        if spec.kind != "mcmdpo":
            return cls(spec.kind, spec.beta, mdpo=mdpo)
        active = resolve_weights(
            dict(spec.weights), lambda_=spec.lambda_, alpha=spec.alpha, gamma=spec.gamma, drop=spec.drop
        )
        return cls("mcmdpo", spec.beta, spec.form, active, norm=resolve_norm(spec.form, spec.norm))

    @property
    def terms(self) -> tuple[str, ...]:
        """The active terms (their rejected conditions are needed)."""
        if self.kind == "dpo":
            return ("rpo",)
        return ("rpo", "vpo") if self.kind == "mdpo" else tuple(self.weights)

    @property
    def conditions(self) -> tuple[str, ...]:
        """Conditions the loss reads (plus ``mw_cw_yl`` for the reported rejected reward), canonical order."""
        names = {CHOSEN, TERMS["rpo"], *(TERMS[t] for t in self.terms)}
        return tuple(c for c in CONDITIONS if c in names)

    def __call__(self, policy: Conditions, reference: Conditions) -> LossResult:
        if self.kind == "dpo":
            return dpo_loss(policy, reference, beta=self.beta)
        if self.kind == "mdpo":
            return mdpo_loss(policy, reference, beta=self.beta, **self.mdpo)
        return weighted_terms(policy, reference, self.weights, beta=self.beta, form=self.form, norm=self.norm)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The metric keys the loss reports (from a one-sample dry run)."""
        zeros = {c: torch.zeros(1, dtype=torch.float64) for c in self.conditions}
        return tuple(sorted(self(zeros, zeros).metrics))
