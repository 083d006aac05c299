"""The rehearsal's step of each GPU stage: the stage's micro-batch from the recipe's data, and the call.

Each builder returns a :class:`Step`: the token counts of the micro-batch (what memory scales with),
``run(model)`` (the stage's own library call; a training step returns its loss), tokens per sample
and condition for the report, and a shape signature (CPU steps with equal signatures run once).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mcmdpo.method.memory import Tokens


@dataclass
class Step:
    """One stage's rehearsed micro-batch: its tokens, what to run, what to report."""

    tokens: Tokens
    run: Callable[[Any], Any]
    per_sample: dict[str, Any]
    training: bool
    signature: str
    probe: Callable[[Any], Any] | None = None
    """``run`` without what reads values (metrics), for ``meta`` (default: ``run``)."""


def lengths_of(s: Any) -> Any:
    """:class:`~mcmdpo.method.lengths.SampleLengths` of a ``PreferenceTokens``."""
    from mcmdpo.method.lengths import SampleLengths

    images, contexts = (s.image_tokens_w, s.image_tokens_l), (len(s.context_w), len(s.context_l))
    return SampleLengths(len(s.prefix), images, contexts, (len(s.answer_w), len(s.answer_l)))


def _crops_tokens(arch: Any, pixels: Any) -> int:
    return int(pixels.shape[0]) * arch.image_tokens


def preference_tokens(arch: Any, samples: Sequence[Any], conditions: Sequence[str], engine: str) -> Tokens:
    """Token counts of ``samples`` (PreferenceTokens) laid out by ``engine`` for ``conditions``."""
    rows, widths, answer, vision, features = 0, [], 0, 0, 0
    for s in samples:
        lengths = lengths_of(s)
        images = sorted({c.split("_")[0][1] for c in conditions})
        shown = images if engine == "shared" else [c.split("_")[0][1] for c in conditions]
        vision += sum(_crops_tokens(arch, s.image(m)[0]) for m in shown)
        features += sum(s.image(m)[2] for m in shown)
        answer += sum(len(s.answer(c.split("_")[2][1])) for c in conditions)
        if engine == "shared":
            rows, widths = rows + 1, [*widths, lengths.tree(conditions)]
        else:
            rows, widths = rows + len(conditions), [*widths, *lengths.conditions(conditions).values()]
    return Tokens(rows, max(widths), answer, vision, features)


def per_condition(samples: Sequence[Any], conditions: Sequence[str]) -> list[dict[str, int]]:
    out = []
    for s in samples:
        lengths = lengths_of(s)
        out.append({**lengths.conditions(conditions), "tree_row": lengths.tree(conditions)})
    return out


def _report(sets: Any, source: Any, conditions: Sequence[str], micro: int) -> dict[str, Any]:
    return {name: per_condition([source.preference_tokens(i) for i in sets.batches[name][:micro]], conditions)
            for name in ("longest", "median")}  # fmt: skip


def needed_micro(doc: Mapping[str, Any]) -> int:
    """The largest micro-batch any stage takes from the preference set."""
    wanted = (("sft", "micro_batch_size"), ("preference", "micro_batch_size"), ("reference", "batch_size"))
    return max(int((doc.get(s) or {}).get(k, 1)) for s, k in wanted)


def preference_step(rehearsal: Any, spec: Any, doc: Mapping[str, Any], family: Any) -> Step:
    from mcmdpo.method.losses import PreferenceLoss
    from mcmdpo.method.train.objectives import PreferenceObjective

    sets = rehearsal.preference_set(doc, needed_micro(doc))
    loss = PreferenceLoss.from_spec(spec.loss)
    objective = PreferenceObjective(sets.source, loss, _zero(loss.conditions), spec.engine, spec.max_length)
    indices = sets.batches["longest"][: spec.micro_batch_size]
    objective.check_lengths(indices)  # the trainer's own refusal of over-long samples
    batch = objective.load(indices)
    tokens = preference_tokens(family.arch, batch.tokens, loss.conditions, spec.engine)
    report = _report(sets, sets.source, loss.conditions, spec.micro_batch_size)
    settings = (spec.engine, spec.loss.kind, spec.precision, spec.gradient_checkpointing, spec.vision_tower)
    signature = f"preference {loss.conditions} {tokens} {settings}"
    mode = sets.source.mode

    def probe(model: Any) -> Any:  # PreferenceObjective.loss without its metric sums
        from mcmdpo.method.logprobs import sequence_logprobs

        policy = sequence_logprobs(
            model, batch.tokens, engine=spec.engine, mode=mode, conditions=loss.conditions
        )
        reference = {c: v.to(model.device) for c, v in (batch.reference or {}).items()}
        return loss(policy, reference).loss.mean()

    return Step(tokens, lambda model: objective.loss(model, batch).loss, report, True, signature, probe)


def _zero(conditions: Sequence[str]) -> Any:
    from mcmdpo.smoke.rehearsal_steps import ZeroReference

    return ZeroReference(conditions)


def reference_step(rehearsal: Any, spec: Any, doc: Mapping[str, Any], family: Any) -> Step:
    from mcmdpo.method.logprobs import sequence_logprobs

    sets = rehearsal.preference_set(doc, needed_micro(doc))
    batch = [sets.source.preference_tokens(i) for i in sets.batches["longest"][: spec.batch_size]]
    conditions, mode = tuple(spec.conditions), sets.source.mode
    tokens = preference_tokens(family.arch, batch, conditions, spec.engine)
    tokens = Tokens(tokens.rows, tokens.width, tokens.answer, tokens.vision, tokens.features)

    def run(model: Any) -> Any:
        return sequence_logprobs(model, batch, engine=spec.engine, mode=mode, conditions=conditions)

    report = _report(sets, sets.source, conditions, spec.batch_size)
    return Step(tokens, run, report, False, f"reference {spec.engine} {conditions} {tokens} {spec.dtype}")


def sft_step(rehearsal: Any, spec: Any, doc: Mapping[str, Any], family: Any) -> Step:
    from mcmdpo.method.train.objectives import SftObjective
    from mcmdpo.smoke.rehearsal_data import sft_file_source

    processor, mode = family.processor, _mode(doc)
    if spec.data == "files":
        source, chosen = sft_file_source(spec, processor, mode, spec.micro_batch_size)
    elif spec.data == "preference":
        sets = rehearsal.preference_set(doc, needed_micro(doc))
        source, chosen = sets.source, {k: v[: spec.micro_batch_size] for k, v in sets.batches.items()}
    else:
        raise ValueError("sft.data = 'curate': the curated set exists only after curation; rehearse without")
    config = family.raw
    objective = SftObjective(source, spec.max_length, int(config["text_config"].get("pad_token_id") or 0),
                             int(config["image_token_index"]))  # fmt: skip
    batch = objective.load(chosen["longest"])
    vision = sum(int(p.shape[0]) * family.arch.image_tokens for p in batch.pixels)
    features = int((batch.input_ids == int(config["image_token_index"])).sum())
    answer = int((batch.labels != -100).sum())
    tokens = Tokens(batch.input_ids.shape[0], batch.input_ids.shape[1], answer, vision, features)
    report = {name: [_sft_row(objective, i) for i in chosen[name]] for name in ("longest", "median")}
    signature = f"sft {tokens} {spec.precision} {spec.gradient_checkpointing} {spec.vision_tower}"
    return Step(tokens, lambda model: objective.loss(model, batch).loss, report, True, signature)


def _sft_row(objective: Any, index: int) -> dict[str, int]:
    ids, labels = objective.row(index)
    return {"sequence": len(ids), "answer": sum(x != -100 for x in labels)}


def eval_step(rehearsal: Any, spec: Any, doc: Mapping[str, Any], family: Any) -> Step:
    from mcmdpo.evaluation.generate import BatchGenerator, GenerationConfig
    from mcmdpo.smoke.rehearsal_data import eval_items

    mode = spec.image_mode or _mode(doc)
    items, benchmark = eval_items(doc, family.processor, mode, rehearsal.folder / "eval", spec.batch_size)
    config = GenerationConfig(max_new_tokens=min(spec.max_new_tokens, 4), num_beams=spec.num_beams,
                              batch_size=spec.batch_size, template=spec.template,
                              question_suffix=spec.question_suffix, image_mode=mode)  # fmt: skip
    probe = BatchGenerator(_ProbeModel(), family.processor, config)
    ids, pixels, _ = probe._inputs(items)
    rows = len(items) * spec.num_beams
    vision = sum(int(p.shape[0]) for p in pixels) * family.arch.image_tokens
    features = sum(sum(1 for t in row if t == family.processor.image_token_id) for row in ids)
    tokens = Tokens(rows, max(map(len, ids)), rows, vision, features * spec.num_beams)

    def run(model: Any) -> Any:
        return BatchGenerator(model, family.processor, config).generate(items)

    report = {"longest": [{"prompt": len(i)} for i in ids], "benchmark": benchmark}
    return Step(tokens, run, report, False, f"eval {tokens} {spec.num_beams} {spec.dtype}")


class _ProbeModel:
    """Enough of a model for ``BatchGenerator._inputs`` (prompts and pixels, no forward)."""

    device = "cpu"


def _mode(doc: Mapping[str, Any]) -> str:
    from mcmdpo.method.memory_plan import stage_mode

    return stage_mode(doc)


STEP_BUILDERS = {
    "sft": sft_step,
    "preference": preference_step,
    "reference": reference_step,
    "eval": eval_step,
}
