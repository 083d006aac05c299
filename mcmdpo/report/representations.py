"""Paper Fig. 7: the ``represent`` tasks' points, one PCA, one figure, distances to the ground truth.

Every model's points and the ground-truth points (one set in mode ``generated``, where one encoder
reads every text; one per model in mode ``prompt``) are projected together onto the first two
principal components (numpy SVD of the centred points; each component's sign is fixed so that its
largest-magnitude loading is positive, so the figure does not flip between runs). The figure has one
panel per model, all on the same axes: the model's points and the ground truth's, as in the paper.
Per model the report gives the mean distance of item i's point to item i's ground-truth point, in
the hidden space (Euclidean and cosine) and in the 2-D projection: ``representations.csv`` and a
Markdown table under the results table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mcmdpo.batch.artifacts import write_text_atomic
from mcmdpo.report.labels import row_label
from mcmdpo.report.layouts import benchmark_title
from mcmdpo.report.tables import row_order

if TYPE_CHECKING:
    from mcmdpo.report.collect import MetricsFile

CSV = "representations.csv"
FIGURE = "representations.png"
COLUMNS = ("run", "label", "model", "benchmark", "mode", "n", "mean_distance", "mean_cosine_distance",
           "mean_distance_2d", "encoder")  # fmt: skip


@dataclass(frozen=True)
class ModelPoints:
    """One represent task: its row label, its points and its ground-truth points (row i = item i)."""

    file: MetricsFile
    label: str
    model: np.ndarray
    reference: np.ndarray

    @property
    def mode(self) -> str:
        return str(self.file.doc.get("mode", "generated"))


def load_points(files: Sequence[MetricsFile], labels: Mapping[str, str]) -> list[ModelPoints]:
    """The points of every represent task, in table row order, labelled like the table's rows."""
    from mcmdpo.evaluation.represent import read_embedded

    runs = list(dict.fromkeys(f.run for f in files))
    ordered = sorted(files, key=lambda f: (runs.index(f.run), row_order(f)))
    out = []
    for f in ordered:
        _, model, reference = read_embedded(f.path.parent)
        label = row_label(f, labels) + (f" [{f.run}]" if len(runs) > 1 else "")
        out.append(ModelPoints(f, label, model, reference))
    return out


def pca_2d(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the 2-D coordinates, the two components [2, H], their shares of the variance) of ``points``.

    Centred SVD; each component's sign makes its largest-magnitude loading positive (deterministic).
    """
    x = np.asarray(points, dtype=np.float64)
    centred = x - x.mean(axis=0, keepdims=True)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:2].copy()
    if components.shape[0] < 2:  # a single point or a single dimension: pad with a zero axis
        components = np.vstack([components, np.zeros((2 - components.shape[0], x.shape[1]))])
    for k in range(2):
        if components[k].any() and components[k][np.argmax(np.abs(components[k]))] < 0:
            components[k] *= -1
    total = float((singular**2).sum())
    shares = np.array(
        [(singular[k] ** 2) / total if total > 0 and k < len(singular) else 0.0 for k in range(2)]
    )
    return centred @ components.T, components, shares


def distances(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean Euclidean distance, mean cosine distance) of row i of ``a`` to row i of ``b``."""
    euclid = np.linalg.norm(a - b, axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = 1.0 - np.einsum("ij,ij->i", a, b) / np.where(norms > 0, norms, 1.0)
    return float(euclid.mean()), float(cosine.mean())


@dataclass(frozen=True)
class Projection:
    """Every model's 2-D points and its ground truth's, and the variance shares of the two axes."""

    models: list[ModelPoints]
    coords: list[np.ndarray]
    references: list[np.ndarray]
    shares: np.ndarray


def project(models: Sequence[ModelPoints]) -> Projection:
    """One PCA over every model's points and the ground truth (once when shared, mode generated)."""
    shared = all(m.mode == "generated" for m in models)
    references = [models[0].reference] if shared else [m.reference for m in models]
    stacked = np.concatenate([*(m.model for m in models), *references])
    coords, _, shares = pca_2d(stacked)
    sizes = [len(m.model) for m in models] + [len(r) for r in references]
    parts = np.split(coords, np.cumsum(sizes)[:-1])
    model_parts, ref_parts = parts[: len(models)], parts[len(models) :]
    if shared:
        ref_parts = ref_parts * len(models)
    return Projection(list(models), model_parts, ref_parts, shares)


def records(projection: Projection) -> list[dict[str, Any]]:
    """One record per model: the distances of its points to the ground truth (see the docstring)."""
    out = []
    for m, xy, ref_xy in zip(projection.models, projection.coords, projection.references, strict=True):
        euclid, cosine = distances(m.model.astype(np.float64), m.reference.astype(np.float64))
        two_d = float(np.linalg.norm(xy - ref_xy, axis=1).mean())
        values = (m.file.run, m.label, m.file.model, m.file.benchmark, m.mode, len(m.model), euclid, cosine,
                  two_d, m.file.doc.get("encoder", ""))  # fmt: skip
        out.append(dict(zip(COLUMNS, values, strict=True)))
    return out


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The distances as a Markdown table with a one-line note on what was embedded."""
    if not rows:
        return ""
    first = rows[0]
    what = {
        "generated": "each model's generated alt-text and the ground truth, read by the base model's LM",
        "prompt": "each model's image + context prompt and the ground truth, read by that model's LM",
    }[str(first["mode"])]
    lines = [f"Representations (paper Fig. 7, figures/{FIGURE}): final-token hidden states of {what}; "
             f"{first['n']} {benchmark_title(str(first['benchmark']))} test items.", "",
             "| Model | mean distance to GT | mean cosine distance | mean 2-D (PCA) distance |",
             "|:---|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['label']} | {r['mean_distance']:.3f} | {r['mean_cosine_distance']:.4f} | "
                     f"{r['mean_distance_2d']:.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_representations(
    files: Sequence[MetricsFile], labels: Mapping[str, str], out_dir: Path, figures: Path | None
) -> tuple[list[Path], str]:
    """``representations.csv`` (+ ``figures/representations.png``) and the Markdown to append."""
    from mcmdpo.report.results import records_csv

    if not files:
        return [], ""
    projection = project(load_points(files, labels))
    rows = records(projection)
    written = [Path(out_dir) / CSV]
    write_text_atomic(written[0], records_csv(rows, COLUMNS))
    if figures is not None:
        written.append(figure(projection, rows, Path(figures) / FIGURE))
    return written, markdown(rows)


def figure(projection: Projection, rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """One panel per model on shared axes: its points and the ground truth's (paper Fig. 7)."""
    from mcmdpo.report.figures import new_figure, save

    n = len(projection.models)
    ncols = min(4, n)
    fig, axes = new_figure(ncols, math.ceil(n / ncols), width=3.2, height=3.0)
    everything = np.concatenate([*projection.coords, *projection.references])
    pad = 0.08 * (everything.max(axis=0) - everything.min(axis=0) + 1e-9)
    low, high = everything.min(axis=0) - pad, everything.max(axis=0) + pad
    text = "Alt-text" if projection.models[0].mode == "generated" else "Prompt"
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.set_axis_off()
            continue
        ref, xy = projection.references[k], projection.coords[k]
        ax.scatter(ref[:, 0], ref[:, 1], s=14, marker="x", color="0.35")
        ax.scatter(xy[:, 0], xy[:, 1], s=14, color=f"C{k % 10}", alpha=0.8)
        ax.set(xlim=(low[0], high[0]), ylim=(low[1], high[1]))
        ax.set_title(f"{projection.models[k].label}\nmean 2-D distance {rows[k]['mean_distance_2d']:.2f}",
                     fontsize=9)  # fmt: skip
        ax.set_xlabel(f"PC1 ({projection.shares[0]:.0%} of variance)", fontsize=8)
        ax.set_ylabel(f"PC2 ({projection.shares[1]:.0%})", fontsize=8)
    _legend(fig, text)
    first = rows[0]
    fig.suptitle(f"Representations (paper Fig. 7): PCA of final-token hidden states, {first['n']} "
                 f"{benchmark_title(str(first['benchmark']))} test items", fontsize=10)  # fmt: skip
    return save(fig, path)


def _legend(fig: Any, text: str) -> None:
    """One legend under the panels: ground truth (grey crosses), the panel's model (coloured dots)."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="x", linestyle="", color="0.35", label="GT Alt-text (ground truth)"),
        Line2D([], [], marker="o", linestyle="", color="C0", label=f"{text} of the panel's model"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8)
