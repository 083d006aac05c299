"""``mcmdpo rehearse RECIPE``: one real-shape step of every GPU stage before any GPU hour is spent.

For every distinct GPU task configuration of the plan (SFT, reference, preference per loss and data
set, eval) the rehearsal takes the longest micro-batch of the recipe's own data (and one around the
median) through the stage's own code at the recipe's widths, micro-batch, precision, image mode and
checkpointing, with the model cut to 1-2 layers:

1. on ``meta`` (shapes only, seconds): forward (+ backward) at depths (1, 1), (2, 1) and (1, 2)
   counting the bytes autograd keeps (:mod:`mcmdpo.method.activations`), with and without gradient
   checkpointing: per-layer activation bytes by difference, times the real depth in the memory plan;
2. on the CPU (``run_cpu``): one real step at depth 1, deduplicated by shapes (bf16 falls back to
   float32 where the CPU has no bf16 units: said in the output).

Per task it reports pass/fail with the error, tokens per sample and condition, the measured bytes and
the memory plan next to the profile's GPU memory, and writes ``<run dir>/rehearsal.json``, which
``--dry-run`` and validation then use instead of the analytic activation model.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mcmdpo.batch.memory import world_size
from mcmdpo.method.memory import GiB, Tokens, TrainSetup, training_plan
from mcmdpo.method.memory_plan import rehearsal_key, task_memory, train_setup, write_rehearsal
from mcmdpo.smoke import rehearsal_data as data
from mcmdpo.smoke import rehearsal_steps as steps
from mcmdpo.smoke.rehearsal_stages import STEP_BUILDERS, Step

STAGES = ("sft", "reference", "preference", "eval")


@dataclass
class Result:
    stage: str
    point: str
    ok: bool = True
    error: str = ""
    per_sample: dict[str, Any] = field(default_factory=dict)
    measured: dict[str, float] = field(default_factory=dict)
    plans: dict[str, Any] = field(default_factory=dict)
    gpu_gib: float | None = None
    cpu: dict[str, Any] = field(default_factory=dict)
    entry: tuple[str, dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        keys = ("stage", "point", "ok", "error", "per_sample", "measured", "plans", "gpu_gib", "cpu")
        return {k: getattr(self, k) for k in keys}


class Rehearsal:
    """Caches the model family and the data per recipe document while rehearsing every task."""

    def __init__(self, folder: Path, run_cpu: bool, log: Callable[[str], None] = print):
        self.folder, self.run_cpu, self.log = folder, run_cpu, log
        self.families: dict[str, steps.Family] = {}
        self.sets: dict[str, data.PreferenceSet] = {}
        self.cpu_done: dict[str, dict[str, Any]] = {}
        self.measured: dict[str, Any] = {}

    def family(self, doc: Mapping[str, Any]) -> steps.Family:
        key = repr((doc.get("model"), doc.get("data")))
        if key not in self.families:
            texts = _texts(doc, self.folder)
            self.families[key] = steps.model_family(doc.get("model") or {}, texts)
        return self.families[key]

    def preference_set(self, doc: Mapping[str, Any], micro: int) -> data.PreferenceSet:
        key = repr((doc.get("model"), doc.get("data"), doc.get("precompute"), micro))
        if key not in self.sets:
            folder = self.folder / f"set-{len(self.sets)}"
            self.sets[key] = data.preference_set(doc, self.family(doc).processor, micro, folder)
        return self.sets[key]

    def task(self, stage: str, spec: Any, doc: Mapping[str, Any], resources: Mapping[str, Any]) -> Result:
        """Rehearse one task configuration (errors become a failed result)."""
        result = Result(stage, _point(doc))
        try:
            family = self.family(doc)
            step = STEP_BUILDERS[stage](self, spec, doc, family)
            result.per_sample = step.per_sample
            if step.training:
                activations = self.measure(family, spec, step)
                result.measured = _per_layer(activations)
                self._plans(result, stage, spec, doc, resources, step.tokens, activations)
            else:
                self._shape_check(family, spec, step)
                self._inference_plan(result, stage, spec, doc, step.tokens)
            if self.run_cpu:
                result.cpu = self.cpu_step(family, spec, step)
        except Exception as exc:  # a failed stage is reported, the others still run
            result.ok, result.error = False, f"{type(exc).__name__}: {exc}".splitlines()[0][:400]
            self.log(traceback.format_exc())
        result.gpu_gib = resources.get("gpu_mem_gb")
        return result

    def measure(self, family: steps.Family, spec: Any, step: Step) -> Any:
        """Per-layer bytes on ``meta``, once per (model, shape signature)."""
        key = f"{id(family)} {step.signature}"
        if key not in self.measured:
            self.measured[key] = steps.measure(family, spec, step.probe or step.run, step.tokens)
        return self.measured[key]

    def _plans(self, result: Result, stage: str, spec: Any, doc: Mapping[str, Any],
               resources: Mapping[str, Any], tokens: Tokens, activations: Any) -> None:  # fmt: skip
        world = world_size(resources)
        setup: TrainSetup = train_setup(stage, spec, self.family(doc).arch, world, tokens, None)
        setup = replace(setup, activations=activations)
        for name, on in (("checkpointing", True), ("no checkpointing", False)):
            result.plans[name] = training_plan(stage, replace(setup, checkpointing=on)).to_json()
        result.plans["recipe"] = "checkpointing" if spec.gradient_checkpointing else "no checkpointing"
        entry = {"tokens": tokens.__dict__, "activations": activations.to_json()}
        result.entry = (rehearsal_key(stage, doc, world), entry)

    def _inference_plan(
        self, result: Result, stage: str, spec: Any, doc: Mapping[str, Any], tokens: Tokens
    ) -> None:
        key = rehearsal_key(stage, doc, 1)
        entry = {"tokens": tokens.__dict__}
        plan = task_memory(stage, spec, doc, 1, {key: entry})
        if plan is not None:
            result.plans["recipe"] = "inference"
            result.plans["inference"] = plan.to_json()
        result.entry = (key, entry)

    def _shape_check(self, family: steps.Family, spec: Any, step: Step) -> None:
        """The inference step on ``meta`` at depth 2 (eval: prompts only; greedy search needs values)."""
        if step.signature.startswith("eval"):
            return
        import torch

        model = steps.build_model(family, 2, 2, "meta", steps.DTYPES[getattr(spec, "dtype", "float32")])
        model.eval()
        with steps.on_meta(), torch.no_grad():
            (step.probe or step.run)(model)

    def cpu_step(self, family: steps.Family, spec: Any, step: Step) -> dict[str, Any]:
        """One real step at depth 1 on the CPU (once per shape signature)."""
        if step.signature in self.cpu_done:
            return {**self.cpu_done[step.signature], "same_shapes_as": "an earlier task"}
        precision = getattr(spec, "precision", None) or getattr(spec, "dtype", "float32")
        precision = "float16" if precision == "auto" else precision
        dtype, note = steps.cpu_dtype(precision)
        started = time.perf_counter()
        model = steps.build_model(family, 1, 1, "cpu", dtype)
        built = time.perf_counter()
        if step.training:
            steps.training_mode(model, spec)
            step.run(model).backward()
        else:
            import torch

            model.eval()
            with torch.no_grad():
                step.run(model)
        done = {"passed": True, "dtype": str(dtype).removeprefix("torch."), "note": note}
        done.update(build_s=round(built - started, 1), step_s=round(time.perf_counter() - built, 1))
        self.cpu_done[step.signature] = done
        del model
        return done


def _texts(doc: Mapping[str, Any], folder: Path) -> list[str]:
    """The tokenizer corpus of a tiny / config model: the recipe's preference texts (as the model
    stage's ``corpus = "data"``), or the built-in corpus."""
    from mcmdpo.method.model.tiny import BUILTIN_CORPUS

    if (doc.get("model") or {}).get("corpus") == "builtin":
        return list(BUILTIN_CORPUS)
    try:
        from mcmdpo.method.data.records import load_records

        file, _ = data.data_files(doc, folder / "texts")
        records = load_records(file, "train")
        return [t for r in records for t in (r.question, r.chosen, r.rejected) if t] or list(BUILTIN_CORPUS)
    except Exception:
        return list(BUILTIN_CORPUS)


def _point(doc: Mapping[str, Any]) -> str:
    data_section = doc.get("data") or {}
    name = Path(str(data_section.get("train_file") or data_section.get("source") or "")).name
    loss = ((doc.get("preference") or {}).get("loss") or {}).get("kind", "")
    return ", ".join(x for x in (name, loss) if x)


def _per_layer(activations: Any) -> dict[str, float]:
    keys = ("text_layer", "vision_layer", "text_layer_ckpt", "vision_layer_ckpt")
    per_layer = {f"{k}_bytes_per_token": round(getattr(activations, k), 1) for k in keys}
    tokens = activations.tokens
    per_layer["text_layer_gib"] = round(activations.text_layer * tokens.text / GiB, 4)
    per_layer["text_layer_ckpt_gib"] = round(activations.text_layer_ckpt * tokens.text / GiB, 4)
    per_layer["vision_layer_gib"] = round(activations.vision_layer * tokens.vision / GiB, 4)
    per_layer["other_gib"] = round(activations.other / GiB, 4)
    per_layer["other_ckpt_gib"] = round(activations.other_ckpt / GiB, 4)
    return per_layer


def rehearse(recipe: Any, folder: Path, run_cpu: bool = True, log: Callable[[str], None] = print) -> dict:
    """Rehearse every distinct GPU task configuration of ``recipe``'s plan; write the rehearsal file
    into its run dir; return the report (``results``, ``file``)."""
    from mcmdpo.batch.plan import build_plan
    from mcmdpo.batch.stage import load_plugins

    registry = load_plugins(recipe.run.plugins)
    plan = build_plan(recipe)
    rehearsal = Rehearsal(folder, run_cpu, log)
    results: list[Result] = []
    seen: set[str] = set()
    for stage in plan.stages:
        if stage.name not in STAGES or stage.kind != "gpu":
            continue
        for inst in stage.instances:
            key = repr(
                (stage.name, inst.spec, {k: inst.recipe.get(k) for k in ("model", "data", "precompute")})
            )
            if key in seen or not inst.tasks:
                continue
            seen.add(key)
            spec = registry[stage.name].spec.model_validate(inst.spec)
            started = time.perf_counter()
            result = rehearsal.task(stage.name, spec, inst.recipe, stage.resources)
            log(f"{stage.name} [{result.point}]: {'passed' if result.ok else 'FAILED'} "
                f"({time.perf_counter() - started:.1f} s)")  # fmt: skip
            results.append(result)
    entries = dict(r.entry for r in results if r.ok and r.entry)
    report = {"recipe": str(recipe.path), "results": [r.to_json() for r in results]}
    path = write_rehearsal(recipe.doc, entries, report)
    return {**report, "file": str(path), "ok": all(r.ok for r in results)}


def rehearse_recipe(
    path: Path, overrides: list[str], smoke: bool, run_cpu: bool, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Load the recipe as the rehearsal sees it (:func:`mcmdpo.smoke.standins.rehearsal_transform`;
    ``smoke``: stand-in data files) and rehearse it in a temporary folder."""
    import tempfile

    from mcmdpo.batch.recipe import load_recipe
    from mcmdpo.smoke.standins import SmokeInputs, rehearsal_transform

    with tempfile.TemporaryDirectory(prefix="mcmdpo-rehearsal-") as tmp:
        inputs = SmokeInputs(Path(tmp) / "inputs", "http://127.0.0.1:9/v1") if smoke else None
        recipe = load_recipe(path, overrides, transform=rehearsal_transform(inputs))
        return rehearse(recipe, Path(tmp) / "work", run_cpu, log)


def report_lines(report: Mapping[str, Any]) -> list[str]:
    """The rehearsal as Markdown: one row per task, then the measured bytes and the plans."""
    lines = ["| stage | point | result | longest micro-batch, tokens per sample | GiB/GPU (ckpt / no ckpt) "
             "| GPU GiB | CPU step |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in report["results"]:
        result = "passed" if r["ok"] else f"FAILED: {r['error']}"
        cells = (r["stage"], r["point"], result, _tokens_cell(r["per_sample"]), _plan_cell(r["plans"]),
                 r["gpu_gib"] or "-", _cpu_cell(r["cpu"]))  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def _tokens_cell(per_sample: Mapping[str, Any]) -> str:
    rows = per_sample.get("longest") or []
    if not rows:
        return "-"
    keys = [k for k in rows[0] if k in ("tree_row", "sequence", "prompt", "mw_cw_yw")]
    return "; ".join(", ".join(f"{k} {row[k]}" for k in keys) for row in rows[:4])


def _plan_cell(plans: Mapping[str, Any]) -> str:
    if "inference" in plans:
        return f"{plans['inference']['total_gib']:.2f}"
    if "checkpointing" not in plans:
        return "-"
    on, off = plans["checkpointing"]["total_gib"], plans["no checkpointing"]["total_gib"]
    return f"{on:.2f} / {off:.2f} ({plans['recipe']})"


def _cpu_cell(cpu: Mapping[str, Any]) -> str:
    if not cpu:
        return "not run"
    same = " (same shapes as an earlier task)" if cpu.get("same_shapes_as") else ""
    note = f"; {cpu['note']}" if cpu.get("note") else ""
    return f"passed, {cpu['dtype']}, {cpu['step_s']} s{same}{note}"
