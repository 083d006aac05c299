"""Readable row labels from the model's stage, its loss kind and its sweep values.

``LLaVA-1.6 (7B)``, ``+SFT``, ``+DPO``, ``+mDPO``, ``+MCM-DPO``, ``T = 700``, ``gamma = 0.2``, ``-L_Pair``;
zero-shot baselines by their entry's ``label`` (``InstructBLIP (13B)``), or their name.

A row shows its sweep values when it has any (the paper's sweep tables label rows ``T = 700``), else
its model label. ``[report] labels`` overrides: keys ``base``, ``sft``, ``dpo``, ``mdpo``, ``mcmdpo``
(model labels),
a baseline's name, or a row key ``<model>@<point>`` (e.g. ``preference@preference.loss.gamma=0.2``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mcmdpo.report.collect import MetricsFile
from mcmdpo.report.results import point_text

MODEL_LABELS = {
    "base": "LLaVA-1.6 (7B)",
    "base_tiny": "Tiny LLaVA",
    "sft": "+SFT",
    "dpo": "+DPO",
    "mdpo": "+mDPO",
    "mcmdpo": "+MCM-DPO",
}
KIND_KEY = "preference.loss.kind"  # already in the model label
BASELINE = "baseline"
"""``model_stage`` of a zero-shot baseline (``[[eval.baselines]]``), labelled by its entry's ``label``."""


GROUP_NAMES = {"single": "Single", "pair": "Pair", "multi": "Multi", "context": "Context"}


def _drop_label(value: Any) -> str:
    """``["pair"]`` -> ``-L_Pair``; ``["pair+cpo"]`` -> ``-L_Pair -L_CPO``; ``[]`` -> ``full``."""
    names = [value] if isinstance(value, str) else list(value)
    parts = [f"-L_{GROUP_NAMES.get(p, p.upper())}" for n in names for p in str(n).lower().split("+")]
    return " ".join(parts) or "full"


DATASET_NAMES = {"pinterest": "PAlt", "twitter": "TAlt", "palt": "PAlt", "talt": "TAlt"}


def data_label(value: Any) -> str:
    """A swept ``[data]`` table -> its data set: ``.../pinterest_train.json`` -> ``PAlt``."""
    if not isinstance(value, Mapping):
        return str(value)
    name = str(value.get("train_file") or value.get("source") or "data").rsplit("/", 1)[-1].split(".")[0]
    stem = name.removesuffix("_train").removesuffix("_preference")
    return DATASET_NAMES.get(stem.lower(), stem)


POINT_LABELS: dict[str, Callable[[Any], str]] = {
    "data": data_label,
    "preference.loss.gamma": lambda v: f"gamma = {v}",
    "preference.loss.alpha": lambda v: f"alpha = {v}",
    "preference.loss.lambda": lambda v: f"lambda = {v}",
    "preference.loss.beta": lambda v: f"beta = {v}",
    "precompute.diffusion_step": lambda v: f"T = {v}",
    "precompute.strategy": lambda v: str(v).capitalize(),
    "preference.loss.drop": _drop_label,
    "sft.vision_tower": lambda v: f"SFT ViT {v}",
    "preference.vision_tower": lambda v: f"pref. ViT {v}",
}


def row_key(file: MetricsFile) -> str:
    """``<model>`` or ``<model>@<point>``: names a row in ``labels`` and ``--compare``."""
    text = point_text(file.point)
    return f"{file.model}@{text}" if text else file.model


def model_kind(file: MetricsFile) -> str:
    """``base``, ``sft``, or the preference loss kind (``dpo``, ``mdpo``, ``mcmdpo``)."""
    if file.model_stage == "model":
        return "base"
    if file.model_stage == "preference":
        spec = file.doc.get("model_spec") or {}
        return str((spec.get("loss") or {}).get("kind", "mcmdpo"))
    return file.model_stage


def model_label(file: MetricsFile, labels: Mapping[str, str]) -> str:
    """The label of the model alone (stage + loss kind)."""
    key = model_kind(file)
    spec = file.doc.get("model_spec") or {}
    if file.model_stage == BASELINE:  # a zero-shot baseline: its entry's label (Table 2's wording)
        return labels.get(file.model, spec.get("label") or file.model)
    if key == "base" and spec.get("source") == "tiny" and "base" not in labels:
        key = "base_tiny"
    return labels.get(key, MODEL_LABELS.get(key, key))


def point_label(point: Mapping[str, Any]) -> str:
    """``gamma = 0.2``, ``T = 700``, ``-L_Pair``, ``<last key part> = <value>`` otherwise; joined by ", "."""
    parts = []
    for key, value in sorted(point.items()):
        if key == KIND_KEY:
            continue
        fmt = POINT_LABELS.get(key)
        parts.append(fmt(value) if fmt else f"{key.split('.')[-1]} = {value}")
    return ", ".join(parts)


def row_label(file: MetricsFile, labels: Mapping[str, str]) -> str:
    """The row's label: an override for its row key, else its sweep values, else its model label.

    When the loss kind is swept together with other keys, the model label leads: ``+DPO (PAlt)``.
    """
    key = row_key(file)
    if key in labels:
        return labels[key]
    point = point_label(file.point)
    if point and KIND_KEY in file.point:
        return f"{model_label(file, labels)} ({point})"
    return point or model_label(file, labels)
