"""Report over 40 metrics files x 1,700 items with bootstrap intervals (target: <= 10 s on 2 cores).

Builds a synthetic run dir in a temp folder (not timed): a plan with 10 model rows (base, SFT and a
gamma sweep of 8 preference models) x 4 benchmarks (PAlt and TAlt with both alt-text protocols,
Object HalBench, AMBER), each with a metrics JSON and 1,700 per-item rows shaped like the score
stage's (per-item paper scores, coco n-gram counts and METEOR statistics, CHAIR mentions, AMBER
counters). Then times, side by side in one process: the report without intervals, the same with
1,000 resamples, and the figures. Ends with one JSON line.

    .venv/bin/python bench/report.py [--files 40] [--n 1700] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mcmdpo.batch.artifacts import write_done, write_json_atomic
from mcmdpo.batch.plan import Plan, PlannedInstance, PlannedStage, PlannedTask

BENCHMARKS = {"palt": "altext", "talt": "altext", "objhal": "objhal", "amber": "amber", "mmhal": "mmhal"}
AMBER_KEYS = ("chair", "safe_cover", "hallu_cover", "non_hallu")


def altext_rows(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    """Per-item rows of both alt-text protocols (scores in [0, 1], CIDEr in [0, 10])."""
    u = rng.random((n, 6))
    rows = []
    for i in range(n):
        t, r = int(rng.integers(3, 30)), int(rng.integers(3, 30))
        guess = [max(0, t - k) for k in range(4)]
        correct = [int(rng.integers(0, g + 1)) // (k + 1) for k, g in enumerate(guess)]
        tf, rf = t // 3, r // 3
        mc, mf = int(rng.integers(0, min(t - tf, r - rf) + 1)), int(rng.integers(0, min(tf, rf) + 1))
        chunks = int(rng.integers(1, mc + mf + 1)) if mc + mf else 0
        stats = [t, r, tf, rf, mc, mc, mf, mf, *[0] * 12, chunks, mc + mf, mc + mf]
        paper = {
            "bleu_4": u[i, 0] ** 3,
            "bleu_1": u[i, 1],
            "cumulative_bleu_4": u[i, 0] ** 2,
            "meteor": u[i, 2],
            "rouge_l": u[i, 3],
            "cider": 10 * u[i, 4] ** 2,
            "edit_distance": int(30 * u[i, 5]),
        }
        coco = {
            "bleu_4": u[i, 0] ** 3,
            "meteor": u[i, 2],
            "rouge_l": u[i, 3],
            "cider": 10 * u[i, 4] ** 2,
            "bleu_counts": {"testlen": t, "reflen": r, "guess": guess, "correct": correct},
            "meteor_stats": [float(x) for x in stats],
        }
        rows.append({"id": i, "paper": paper, "coco": coco})
    return rows


def objhal_rows(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        mentions = [["dog", "dog"]] * int(rng.integers(0, 5))
        hallucinated = mentions[: int(rng.integers(0, len(mentions) + 1))]
        truth = ["dog", "cat", "car"][: int(rng.integers(1, 4))]
        rows.append(
            {
                "id": i,
                "mentions": mentions,
                "hallucinated": hallucinated,
                "ground_truth": truth,
                "correct_classes": int(bool(len(mentions) - len(hallucinated))),
                "words": int(rng.integers(5, 80)),
            }
        )
    return rows


def amber_rows(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        nouns = int(rng.integers(0, 8))
        hal = int(rng.integers(0, nouns + 1))
        counters = {
            "chair_score": hal,
            "chair_num": nouns,
            "safe_cover_score": int(rng.integers(0, 4)),
            "safe_cover_num": 4,
            "hallu_cover_score": int(rng.integers(0, 3)),
            "hallu_cover_num": 3,
            "non_hallu_score": int(hal == 0),
            "non_hallu_num": 1,
        }
        rows.append({"id": i, "counters": counters})
    return rows


def mmhal_rows(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    return [{"id": i, "rating": int(rng.integers(0, 7))} for i in range(n)]


ROWS = {"altext": altext_rows, "objhal": objhal_rows, "amber": amber_rows, "mmhal": mmhal_rows}


def metrics_block(kind: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate metrics as the score stage reports them, computed from ``rows``."""
    from mcmdpo.report.estimators import metric_defs
    from mcmdpo.report.stats import point_value

    def values(protocol: str) -> dict[str, float]:
        return {m.name: point_value(m.columns(rows, {}), m.reduce) for m in metric_defs(kind, protocol)}

    if kind == "altext":
        paper = values("paper")
        shown = {
            k: (round(v / 100, 5) * 100 if k != "edit_distance" else round(v, 3)) for k, v in paper.items()
        }
        unrounded = {k: v for k, v in paper.items() if k != "edit_distance"}
        return {
            "paper": {**shown, "unrounded": unrounded, "num_samples": len(rows)},
            "coco": {**values("coco"), "num_samples": len(rows)},
        }
    if kind == "amber":
        counters = {
            f"{k}_{p}": float(sum(r["counters"][f"{k}_{p}"] for r in rows))
            for k in AMBER_KEYS
            for p in ("score", "num")
        }
        counters.update({f"{k}_num": counters[f"{k}_num"] + 0.001 for k in AMBER_KEYS})  # metrics.txt offsets
        doc = {"counters": counters}
        exact = {
            m.name: point_value(m.columns(rows, {"metrics": doc}), m.reduce) for m in metric_defs("amber")
        }
        return {**{k: round(v, 1) for k, v in exact.items()}, "unrounded": exact, "counters": counters}
    return {**values(""), "num_samples": len(rows)}


def make_run(
    root: Path,
    models: Sequence[tuple[str, dict[str, Any]]],
    benchmarks: Sequence[str],
    n: int,
    seed: int = 0,
    name: str = "bench",
    sections: Mapping[str, Any] | None = None,
) -> Path:
    """A run dir with a plan and one finished score task per (model, benchmark); returns it.

    ``models``: (model name, sweep point) pairs, e.g. ``("preference", {"preference.loss.gamma": 0.2})``;
    ``sections``: more recipe sections of every point (e.g. ``{"data": {"train_file": ...}}``).
    """
    run_dir = root / name
    rng = np.random.default_rng(seed)
    instances = []
    for index, (model, point) in enumerate(models):
        tasks = []
        for bench in benchmarks:
            task_id = f"t{index:03d}{bench}"
            _write_task(run_dir / "score" / task_id, model, point, bench, ROWS[BENCHMARKS[bench]](rng, n))
            tasks.append(
                PlannedTask("score", task_id, f"i{index}", len(tasks), {"model": model, "benchmark": bench})
            )
        recipe = {"run": {"name": name, "seed": seed}, "preference": {"loss": {**point}}, **(sections or {})}
        instances.append(PlannedInstance("score", f"i{index}", {}, recipe, {}, [point], tasks))
    stage = PlannedStage("score", "cpu", False, [], {}, instances)
    plan = Plan(name, run_dir, seed, [], "local", [stage])
    write_json_atomic(run_dir / "plan.json", plan.to_json())
    return run_dir


def _write_task(
    folder: Path, model: str, point: Mapping[str, Any], bench: str, rows: list[dict[str, Any]]
) -> None:
    stage = {"base": "model", "sft": "sft"}.get(model, "preference")
    spec = (
        {"loss": {"kind": "mcmdpo", **{k.split(".")[-1]: v for k, v in point.items()}}}
        if stage == "preference"
        else {}
    )
    doc = {
        "model": model,
        "model_stage": stage,
        "model_spec": spec,
        "benchmark": bench,
        "kind": BENCHMARKS[bench],
        "num_predictions": len(rows),
        "limit": None,
        "points": [dict(point)],
        "deviations": [],
        "metrics": metrics_block(BENCHMARKS[bench], rows),
        "samples": f"{bench}.samples.jsonl",
    }
    rel = f"metrics/{model}/{bench}"
    folder.joinpath(rel).parent.mkdir(parents=True, exist_ok=True)
    folder.joinpath(f"{rel}.samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_json_atomic(folder / f"{rel}.json", doc)
    write_done(folder / "DONE", {"stage": "score", "outputs": [f"{rel}.json", f"{rel}.samples.jsonl"]})


def bench_models(files: int, benchmarks: int) -> list[tuple[str, dict[str, Any]]]:
    rows = max(1, files // benchmarks)
    gammas = [round(0.1 * (k + 1), 1) for k in range(max(0, rows - 2))]
    models = [("base", {}), ("sft", {})] + [("preference", {"preference.loss.gamma": g}) for g in gammas]
    return models[:rows]


def timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--n", type=int, default=1700)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    from mcmdpo.report.collect import _read_samples
    from mcmdpo.report.outputs import write_report
    from mcmdpo.report.spec import ReportSpec

    benchmarks = ["palt", "talt", "objhal", "amber"]
    with tempfile.TemporaryDirectory(prefix="mcmdpo-bench-report-") as tmp:
        run = make_run(Path(tmp), bench_models(args.files, len(benchmarks)), benchmarks, args.n)
        files = len(list(run.glob("score/*/metrics/*/*.json")))
        write_report([run], Path(tmp) / "warm", ReportSpec(resamples=0, figures=False))  # imports, not timed
        _read_samples.cache_clear()
        _, no_ci = timed(lambda: write_report([run], Path(tmp) / "a", ReportSpec(resamples=0, figures=False)))
        _read_samples.cache_clear()
        spec = ReportSpec(resamples=args.resamples, figures=False)
        out, with_ci = timed(lambda: write_report([run], Path(tmp) / "b", spec))
        _read_samples.cache_clear()
        _, reading = timed(lambda: [_read_samples(p) for p in run.glob("score/*/metrics/*/*.samples.jsonl")])
        _read_samples.cache_clear()
        _, figures = timed(lambda: write_report([run], Path(tmp) / "c", ReportSpec(resamples=args.resamples)))
    missing = sum(1 for r in out.results if not r.has_interval)
    print(
        f"{files} metrics files x {args.n} items: tables without intervals {no_ci:.2f} s, "
        f"with {args.resamples} resamples {with_ci:.2f} s, everything incl. figures {figures:.2f} s"
    )
    print(
        json.dumps(
            {
                "bench": "report",
                "files": files,
                "items": args.n,
                "resamples": args.resamples,
                "values": len(out.results),
                "values_without_interval": missing,
                "no_ci_s": round(no_ci, 3),
                "with_ci_s": round(with_ci, 3),
                "ci_overhead_s": round(with_ci - no_ci, 3),
                "of_which_reading_items_s": round(reading, 3),
                "with_figures_s": round(figures, 3),
                "meets_target": with_ci <= 10.0,
            }
        )
    )


if __name__ == "__main__":
    main()
