"""``mcmdpo submit RECIPE --smoke``: the recipe's DAG on stand-ins, on one CPU machine, in minutes.

The smoke recipe is the real one rewritten before validation (:func:`smoke_transform`), so the same
stages, sweep points, instances, tasks and dependencies are planned, and a missing section, a wrong
key or a benchmark without files fails the same way; only what is too big or too far away changes:

- ``[run]``: name ``<name>-smoke`` (same ``output_root``); ``[cluster]``: local executor, ``local``
  profile, no resource overrides;
- ``[model] source = "path"`` -> the tiny random LLaVA-NeXT (same ``mode``; tokenizer on the built-in
  corpus, so that the model depends on ``[data]`` as little as a real checkpoint does);
- data files (``[data]``, ``[[sft.files]]``, ``[eval.talt]`` / ``[eval.palt]``): the first few
  records of the real file when it is there (``${VAR}`` set, file readable; images from the real
  folder), else generated stand-ins in the same format (:mod:`mcmdpo.smoke.fixtures`: demo preference JSON
  or RLHF-V-style parquet, LLaVA conversations, upstream test JSONL);
- ``[eval.objhal]``, ``[eval.mmhal]``, ``[eval.amber]``: generated files with a few items;
- ``[[eval.baselines]]``: ``hf`` entries -> the tiny random model of their family (InstructBLIP,
  Chameleon, VIP-LLaVA, Qwen2-VL, Idefics3; LLaVA-NeXT for the rest, remote-code models included),
  ``api`` entries -> the judge stand-in below; ``[eval.examples]`` files like the data files;
- ``[score.judge]``: a fixed-rating endpoint (:class:`mcmdpo.smoke.fixtures.FixedJudge`, every reply ends in
  ``Rating: 4``) that the smoke submit starts on 127.0.0.1 and stops when the run ends; NLTK in the
  fallback modes (``treebank`` / ``wordnet``: no punkt or tagger data needed), AMBER ``exact``;
- sizes: training ``max_steps = 1`` on batches of 2 in fp32 without gradient checkpointing,
  ``eval.limit`` = max(2, shards), 4 new tokens, 100 bootstrap resamples.

Whole sections swept in ``[sweep]`` (``data = [{...}, {...}]``) are rewritten point by point; sweeps over
single path fields are not. ``[curate]`` is left as written (it needs a real LLM endpoint). Stand-in
files are written under ``<run dir>/smoke-inputs/`` (with ``--dry-run``: into a temporary folder,
removed after planning, because validation checks that data files exist).
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcmdpo.batch.spec import expand_vars
from mcmdpo.smoke import fixtures

if TYPE_CHECKING:
    from mcmdpo.batch.plan import Plan
    from mcmdpo.batch.recipe import Recipe

SUFFIX = "-smoke"
TRAIN_RECORDS, TEST_RECORDS, SFT_RECORDS, BENCHMARK_ITEMS = 8, 4, 6, 4
TRAINING = ("sft", "preference")


@dataclass
class SmokeInputs:
    """Where stand-in files go and the judge stand-in's URL."""

    root: Path
    judge_url: str

    def make(self, name: str, maker: Callable[[Path], Mapping[str, Any]]) -> dict[str, str]:
        """``maker(folder)`` run in ``root/name``; its paths as strings."""
        return {k: str(v) for k, v in maker(self.root / name).items()}


def judge_port(name: str) -> int:
    """A port derived from the run name (same URL, hence same score task ids, on every re-submit)."""
    return 20000 + int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 20000


def smoke_names(doc: Mapping[str, Any]) -> tuple[str, Path]:
    """The smoke run's name and run dir."""
    run = doc.get("run") or {}
    name = f"{run.get('name', 'run')}{SUFFIX}"
    root = _expanded(run.get("output_root", "runs")) or "runs"
    return name, (Path(root) / name).absolute()


@contextlib.contextmanager
def smoke_session(path: Path | str, overrides: Sequence[str] = (), dry_run: bool = False) -> Iterator[Recipe]:
    """Load the smoke version of the recipe at ``path``; keep the judge stand-in up meanwhile."""
    from mcmdpo.batch.recipe import load_recipe
    from mcmdpo.batch.recipe.toml import load_toml, parse_override, set_dotted

    doc = load_toml(Path(path))[0]
    for text in overrides:  # run.name / run.output_root may be overridden
        set_dotted(doc, *parse_override(text), f"--set {text}")
    name, run_dir = smoke_names(doc)
    port = judge_port(name)
    with contextlib.ExitStack() as stack:
        root = run_dir / "smoke-inputs"
        if dry_run:  # validation needs the files; they go away with the dry run
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mcmdpo-smoke-")))
        else:
            port = stack.enter_context(_start_judge(port)).port
        inputs = SmokeInputs(root, f"http://127.0.0.1:{port}/v1")
        yield load_recipe(path, overrides, transform=smoke_transform(inputs))


@contextlib.contextmanager
def _start_judge(port: int) -> Iterator[fixtures.FixedJudge]:
    try:
        judge = fixtures.FixedJudge(port=port)
    except OSError:  # the derived port is taken: any free one
        judge = fixtures.FixedJudge()
    with judge:
        yield judge


# ---------------------------------------------------------------- the rewrite


def smoke_transform(inputs: SmokeInputs) -> Callable[[dict[str, Any]], None]:
    """The rewrite of a raw recipe document (see the module docstring)."""

    def transform(doc: dict[str, Any]) -> None:
        name, _ = smoke_names(doc)
        run = doc.setdefault("run", {})
        run["name"] = name
        run["output_root"] = _expanded(run.get("output_root", "runs")) or "runs"
        cluster = doc.get("cluster") or {}
        doc["cluster"] = {
            "executor": "local",
            "profile": "local",
            "max_parallel": cluster.get("max_parallel", 2),
        }
        for section, rewrite in SECTIONS.items():
            if isinstance(doc.get(section), dict):
                rewrite(doc[section], inputs, section)
        for key, values in (doc.get("sweep") or {}).items():
            if key in SECTIONS and isinstance(values, list):
                for k, value in enumerate(values):
                    if isinstance(value, dict):
                        SECTIONS[key](value, inputs, f"{key}-{k}")

    return transform


def _expanded(value: Any) -> str | None:
    """``value`` with ``${VAR}`` expanded, None when a variable is not set."""
    try:
        return expand_vars(value)
    except Exception:
        return None


def _readable(value: Any) -> Path | None:
    text = _expanded(value) if value else None
    return Path(text) if text and Path(text).exists() else None


def _records_file(file: Any, images: Any, inputs: SmokeInputs, tag: str, n: int, make: Callable) -> tuple:
    """(file, images) of the first ``n`` records of a real file, or of a generated stand-in; either
    way under the real file's name (the report labels a swept data set by it: ``+DPO (PAlt)``)."""
    real, root = _readable(file), _readable(images) if images else None
    if real is not None and real.is_file() and (root is not None or not images):
        out = fixtures.head_file(real, n, inputs.root / tag / real.name)
        return str(out), str(root) if root else None
    made = inputs.make(tag, make)
    stand_in, name = Path(made["file"]), Path(str(file or "")).name  # "${VAR}" alone: no name
    if "$" not in name and name != stand_in.name and Path(name).suffix == stand_in.suffix:
        stand_in = stand_in.replace(stand_in.with_name(name))
    return str(stand_in), made.get("images")


def _data(section: dict[str, Any], inputs: SmokeInputs, tag: str) -> None:
    source = section.get("source", "demo")
    if source == "demo":
        section.update(num_train=TRAIN_RECORDS, num_test=TEST_RECORDS, min_image_size=32, max_image_size=64)
        return
    if source != "files":
        return
    if section.get("train_file"):
        fmt = "parquet" if str(section["train_file"]).endswith(".parquet") else "json"
        make = lambda d: fixtures.preference_files(d, TRAIN_RECORDS, fmt)  # noqa: E731
        file, images = _records_file(section["train_file"], section.get("train_images"), inputs,
                                     f"{tag}-train", TRAIN_RECORDS, make)  # fmt: skip
        section.update(train_file=file, train_images=images or str(Path(file).parent))
    if section.get("test_file"):
        make = lambda d: fixtures.altext_test(d, TEST_RECORDS)  # noqa: E731
        file, images = _records_file(section["test_file"], section.get("test_images"), inputs,
                                     f"{tag}-test", TEST_RECORDS, make)  # fmt: skip
        section.update(test_file=file, test_images=images)


def _model(section: dict[str, Any], inputs: SmokeInputs, tag: str) -> None:
    if section.get("source") == "path":
        mode = section.get("mode", "pad")
        section.clear()
        section.update(source="tiny", mode=mode, corpus="builtin")  # like a path: no [data] dependency


def _precompute(section: dict[str, Any], inputs: SmokeInputs, tag: str) -> None:
    if section.get("processor_path") and _readable(section["processor_path"]) is None:
        section.pop("processor_path")
    if section.get("data_file"):
        make = lambda d: fixtures.preference_files(d, TRAIN_RECORDS)  # noqa: E731
        file, images = _records_file(section["data_file"], section.get("image_root"), inputs,
                                     f"{tag}-data", TRAIN_RECORDS, make)  # fmt: skip
        section.update(data_file=file, image_root=images or str(Path(file).parent))


def _training(section: dict[str, Any], inputs: SmokeInputs, tag: str) -> None:
    for key in ("gradient_accumulation_steps", "max_samples", "checkpoint_every_steps", "vision_tower_lr"):
        section.pop(key, None)
    section.update(max_steps=1, global_batch_size=2, micro_batch_size=1, precision="fp32",
                   gradient_checkpointing=False, tensorboard=False)  # fmt: skip
    if tag.startswith("sft"):
        section["data_workers"] = min(int(section.get("data_workers", 1)), 1)
        _sft_files(section, inputs, tag)


def _sft_files(section: dict[str, Any], inputs: SmokeInputs, tag: str) -> None:
    if tag.startswith("sft"):
        section["files"] = [
            _sft_file(f, inputs, f"{tag}-file{k}") for k, f in enumerate(section.get("files", []))
        ]
        if not section["files"]:
            section.pop("files")


def _sft_file(entry: dict[str, Any], inputs: SmokeInputs, tag: str) -> dict[str, Any]:
    make = lambda d: fixtures.sft_conversations(d, SFT_RECORDS)  # noqa: E731
    file, images = _records_file(entry["file"], entry.get("images"), inputs, tag, SFT_RECORDS, make)
    out = {**entry, "file": file, "images": images}
    return {k: v for k, v in out.items() if v is not None and k != "limit"}


def _reference(section: dict[str, Any], inputs: SmokeInputs, tag: str) -> None:
    section.update(batch_size=2, dtype="float32", device="cpu")


BENCHMARK_FILES: dict[str, Callable[[Path], Mapping[str, Any]]] = {
    "objhal": lambda d: fixtures.objhal_files(d, BENCHMARK_ITEMS),
    "mmhal": lambda d: fixtures.mmhal_files(d, BENCHMARK_ITEMS),
    "amber": lambda d: fixtures.amber_files(d, BENCHMARK_ITEMS),
}


def _eval(section: dict[str, Any], inputs: SmokeInputs, tag: str) -> None:
    shards = int(section.get("shards", 1))
    section.update(limit=max(2, shards), max_new_tokens=4, batch_size=2, dtype="float32")
    _eval_files(section, inputs, tag)


def _eval_files(section: dict[str, Any], inputs: SmokeInputs, tag: str) -> None:
    for name in ("talt", "palt"):
        if isinstance(section.get(name), dict):
            make = lambda d: fixtures.altext_test(d, TEST_RECORDS)  # noqa: E731
            entry = section[name]
            file, images = _records_file(entry.get("file"), entry.get("images"), inputs,
                                         f"{tag}-{name}", TEST_RECORDS, make)  # fmt: skip
            section[name] = {"file": file, "images": images}
    if isinstance(section.get("examples"), dict):
        make = lambda d: fixtures.preference_files(d, TRAIN_RECORDS)  # noqa: E731
        section["examples"] = {
            name: _records_file(file, None, inputs, f"{tag}-examples-{name}", TRAIN_RECORDS, make)[0]
            for name, file in section["examples"].items()
        }
    section["baselines"] = [
        _baseline(b, inputs) for b in section.get("baselines") or [] if isinstance(b, dict)
    ]
    if not section["baselines"]:
        section.pop("baselines")
    for name, make in BENCHMARK_FILES.items():
        if isinstance(section.get(name), dict):
            made = inputs.make(f"{tag}-{name}", make)
            keys = {
                "objhal": ("file", "coco_dir", "synonyms"),
                "mmhal": ("file",),
                "amber": ("data_dir", "images"),
            }
            section[name] = {k: made[k] for k in keys[name]}


def _baseline(entry: dict[str, Any], inputs: SmokeInputs) -> dict[str, Any]:
    """A zero-shot baseline on a stand-in: the tiny model of its family (:func:`stand_in_family`;
    built once per smoke run), or, for an endpoint, the smoke run's fixed-reply server."""
    out = {k: v for k, v in entry.items() if k not in ("revision", "params_b", "trust_remote_code", "dtype")}
    if entry.get("kind", "hf") == "api":
        out["api"] = {"base_url": inputs.judge_url, "api_key_env": "", "timeout_s": 30.0, "max_retries": 1}
        return out
    family = stand_in_family(str(_expanded(entry.get("model")) or ""))
    folder = inputs.root / "baselines" / family
    if not (folder / "config.json").is_file():
        from mcmdpo.smoke.families import build_family

        build_family(family, folder)
    out["model"] = str(folder)
    return out


STAND_INS = (
    ("instructblip", "instructblip"),
    ("chameleon", "chameleon"),
    ("vip-llava", "vipllava"),
    ("vipllava", "vipllava"),
    ("qwen2.5", "qwen2_5_vl"),
    ("qwen2", "qwen2_vl"),
    ("idefics", "idefics3"),
    ("smolvlm", "idefics3"),
)
"""Model id fragment -> tiny family (:mod:`mcmdpo.smoke.families`); anything else: ``llava_next``."""


def stand_in_family(model: str) -> str:
    """The tiny family standing in for ``model`` (a local folder's own model type when it has one)."""
    config = Path(model) / "config.json"
    if model and config.is_file():
        import json

        from mcmdpo.smoke.families import FAMILIES

        kind = json.loads(config.read_text()).get("model_type")
        if kind in FAMILIES:
            return str(kind)
    lower = model.lower()
    return next((family for needle, family in STAND_INS if needle in lower), "llava_next")


def _score(section: dict[str, Any], inputs: SmokeInputs, tag: str) -> None:
    if isinstance(section.get("judge"), dict):
        section["judge"] = {"base_url": inputs.judge_url, "model": fixtures.JUDGE_MODEL, "api_key_env": "",
                            "timeout_s": 30.0, "max_retries": 1}  # fmt: skip
    nltk = section.setdefault("nltk", {})
    nltk.update(tokenizer="treebank", tagger="wordnet")
    section.setdefault("amber", {})["similarity"] = "exact"
    section.setdefault("objhal", {})["extractor"] = "nltk"
    section["objhal"].pop("spacy_model", None)


def _represent(section: dict[str, Any], inputs: SmokeInputs, tag: str) -> None:
    section.update(dtype="float32", batch_size=2)


def _report(section: dict[str, Any], inputs: SmokeInputs, tag: str) -> None:
    section["resamples"] = min(int(section.get("resamples", 1000)), 100)


SECTIONS: dict[str, Callable[[dict[str, Any], SmokeInputs, str], None]] = {
    "data": _data,
    "model": _model,
    "precompute": _precompute,
    "sft": _training,
    "reference": _reference,
    "preference": _training,
    "eval": _eval,
    "score": _score,
    "represent": _represent,
    "report": _report,
}


def report_markdown(plan: Plan) -> str | None:
    """The table the run's report stage wrote (``table.md``), or None without a finished report."""
    if not any(s.name == "report" for s in plan.stages):
        return None
    for task in plan.stage("report").tasks:
        table = plan.paths.run_dir / "report" / task.task_id / "table.md"
        if table.is_file():
            return table.read_text()
    return None


# ---------------------------------------------------------------- the rehearsal's rewrite

DATA_SECTIONS: dict[str, Callable[[dict[str, Any], SmokeInputs, str], None]] = {
    "data": _data,
    "precompute": _precompute,
    "sft": _sft_files,
    "eval": _eval_files,
}
"""``mcmdpo rehearse --smoke``: only the data files become stand-ins (sizes and settings stay)."""


def rehearsal_transform(inputs: SmokeInputs | None) -> Callable[[dict[str, Any]], None]:
    """What ``mcmdpo rehearse`` changes before validation: a model folder that is not here becomes the
    shipped config of the same name; with ``inputs`` (``--smoke``) the data files become stand-ins and
    the run is ``<name>-smoke``. Micro-batches, precisions, modes and lengths stay as written."""

    def transform(doc: dict[str, Any]) -> None:
        if isinstance(doc.get("model"), dict):
            _model_config(doc["model"])
        if inputs is None:
            return
        run = doc.setdefault("run", {})
        run["name"], _ = smoke_names(doc)
        run["output_root"] = _expanded(run.get("output_root", "runs")) or "runs"
        for section, rewrite in DATA_SECTIONS.items():
            if isinstance(doc.get(section), dict):
                rewrite(doc[section], inputs, section)
        for key, values in (doc.get("sweep") or {}).items():
            if key in DATA_SECTIONS and isinstance(values, list):
                for k, value in enumerate(values):
                    if isinstance(value, dict):
                        DATA_SECTIONS[key](value, inputs, f"{key}-{k}")

    return transform


def _model_config(section: dict[str, Any]) -> None:
    from mcmdpo.method.model.architecture import shipped_match

    if section.get("source") != "path" or _readable(section.get("path")) is not None:
        return
    name = shipped_match(str(section.get("path", "")))
    if name is not None:
        mode = section.get("mode", "pad")
        section.clear()
        section.update(source="config", config=name, mode=mode)
