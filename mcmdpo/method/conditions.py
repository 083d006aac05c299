"""The names of MCM-DPO's conditions, terms, weight groups and ablations (no torch: specs import these).

A condition ``m?_c?_y?`` names the image (``mw`` chosen / ``ml`` rejected), the context (``cw`` /
``cl``) and the answer (``yw`` / ``yl``). Every term compares the chosen triple ``mw_cw_yw`` with one
rejected triple (:data:`TERMS`); :mod:`mcmdpo.method.losses` computes them.
"""

from __future__ import annotations

from typing import Literal, get_args

Condition = Literal[
    "mw_cw_yw", "mw_cw_yl", "ml_cw_yw", "ml_cw_yl", "mw_cl_yw", "mw_cl_yl", "ml_cl_yw", "ml_cl_yl"
]
CONDITIONS: tuple[str, ...] = get_args(Condition)
CHOSEN = "mw_cw_yw"

Term = Literal["rpo", "vpo", "cpo", "vrpo", "crpo", "vcpo", "mtppo"]
TERMS: dict[str, str] = {
    "rpo": "mw_cw_yl",
    "vpo": "ml_cw_yw",
    "cpo": "mw_cl_yw",
    "vrpo": "ml_cw_yl",
    "crpo": "mw_cl_yl",
    "vcpo": "ml_cl_yw",
    "mtppo": "ml_cl_yl",
}
"""term -> its rejected condition (the chosen one is always :data:`CHOSEN`)."""
WEIGHT_GROUPS: dict[str, tuple[str, ...]] = {
    "lambda": ("rpo",),
    "alpha": ("vpo", "cpo"),
    "gamma": ("vrpo", "crpo", "vcpo", "mtppo"),
}
DEFAULT_GROUP_WEIGHTS = {"lambda": 1.0, "alpha": 0.5, "gamma": 0.2}
ABLATIONS: dict[str, tuple[str, ...]] = {
    "single": ("rpo", "vpo", "cpo"),
    "pair": ("vrpo", "crpo", "vcpo"),
    "multi": ("mtppo",),
    "pair+cpo": ("vrpo", "crpo", "vcpo", "cpo"),
    "context": ("cpo", "crpo", "vcpo", "mtppo"),
}
"""Paper Table 7 ablation groups; single term names are accepted in ``drop`` as well. ``context``
drops every term whose rejected triple has the rejected context c_l: what is left (RPO, VPO, VRPO)
is the hallucination variant of paper appendix A (RLHF-V data has no context), which needs only the
four conditions ``mw_cw_yw, mw_cw_yl, ml_cw_yw, ml_cw_yl``."""


def ablation_key(name: str) -> str:
    """The canonical spelling of a ``drop`` entry (``"-Pair"`` and ``"pair"`` are the same group)."""
    return name.lower().replace(" ", "").replace("-", "")
