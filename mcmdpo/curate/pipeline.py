"""The LLM steps of curation, one coroutine per record: names, grammar, rejected + verification.

Per record (in this order, as in the paper's section 4):

1. person names -> ``[person]`` in the context and the alt-text (:mod:`mcmdpo.curate.names`);
2. grammar correction of both with the paper's prompt: the reply's first line ``True``/``False``,
   the corrected text after ``True``; an unparseable reply keeps the text and is counted;
3. the split, from a hash of the record's id (:func:`split_of`); only ``preference`` records get
4. a rejected alt-text (paper prompt, ``rejected_temperature``) checked by the judge with swapped
   positions: first chosen = ``Alt-text A``, then chosen = ``Alt-text B``; kept only if the chosen
   wins both (the first standalone A/B of each reply counts; the second question is skipped once the
   first is lost, since the pair can no longer be kept). A generation equal to the chosen text (or
   empty) fails without asking. Up to ``max_attempts`` generations, then the record is dropped.

Every finished record is appended to an fsynced ledger (:class:`mcmdpo.batch.resumable.BatchLedger`); a killed
or requeued task resumes after the records already written, and the requests of the records it was
working on are answered by the reply cache (each generation attempt has its own cache entry).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcmdpo.curate.names import NameReplacer
from mcmdpo.curate.prompts import (
    GrammarVerdict,
    grammar_messages,
    parse_choice,
    parse_grammar,
    parse_rejected,
    rejected_messages,
    same_text,
    verify_messages,
)
from mcmdpo.curate.spec import CurateSpec, SplitSpec
from mcmdpo.llm import LLMClient, gather_limited

SPLITS = ("sft", "preference", "test")


def split_of(record_id: int | str, spec: SplitSpec) -> str:
    """``sft`` / ``preference`` / ``test`` from sha256(salt, id): deterministic, order-independent."""
    from mcmdpo.evaluation.metrics.predictions import id_key

    digest = hashlib.sha256(f"{spec.salt}\0{id_key(record_id)}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < spec.sft:
        return "sft"
    return "preference" if u < spec.sft + spec.preference else "test"


@dataclass
class Curator:
    """Runs the LLM steps of one record (see the module docstring)."""

    spec: CurateSpec
    client: LLMClient
    names: NameReplacer

    async def curate(self, item: dict[str, Any]) -> dict[str, Any]:
        """The curated record of one scanned record (``status`` kept or dropped)."""
        texts = await asyncio.gather(*(self.names.replace(item[k]) for k in ("context", "alt_text")))
        (context, n_context, ok_context), (alt, n_alt, ok_alt) = texts
        out = {
            **item,
            "original": {"context": item["context"], "alt_text": item["alt_text"]},
            "names": {"method": self.names.method, "replaced": n_context + n_alt},
            "names_unparsed": int(not ok_context) + int(not ok_alt),
            "split": split_of(item["raw_id"], self.spec.split),
            "status": "kept",
        }
        if self.spec.grammar:
            verdicts = await asyncio.gather(*(self._grammar(t) for t in (context, alt)))
            context, alt = verdicts[0].text, verdicts[1].text
            out["grammar"] = {
                k: {"corrected": v.errors, "parsed": v.parsed}
                for k, v in zip(("context", "alt_text"), verdicts, strict=True)
            }
        out.update(context=context, alt_text=alt)
        if out["split"] == "preference":
            out.update(await self.rejected(context, alt))
        return out

    async def _grammar(self, text: str) -> GrammarVerdict:
        reply = await self.client.acomplete(grammar_messages(text))
        return parse_grammar(reply.content, text)

    async def rejected(self, context: str, chosen: str) -> dict[str, Any]:
        """``rejected``, every ``attempts`` entry, and ``status`` (dropped after max_attempts)."""
        attempts = []
        for number in range(1, self.spec.max_attempts + 1):
            reply = await self.client.acomplete(
                rejected_messages(context, chosen),
                temperature=self.spec.rejected_temperature,
                variant={"attempt": number},
            )
            attempt = await self.verify(context, chosen, parse_rejected(reply.content))
            attempts.append({**attempt, "model": reply.model})
            if attempt["outcome"] == "kept":
                return {"rejected": attempt["rejected"], "attempts": attempts}
        return {"rejected": None, "attempts": attempts, "status": "dropped"}

    async def verify(self, context: str, chosen: str, rejected: str) -> dict[str, Any]:
        """One candidate through the swapped-position check."""
        if not rejected or same_text(rejected, chosen):
            return {"rejected": rejected, "verdicts": [], "outcome": "empty" if not rejected else "identical"}
        verdicts = []
        for a, b, win in ((chosen, rejected, "A"), (rejected, chosen, "B")):
            reply = await self.client.acomplete(verify_messages(context, a, b))
            verdicts.append(parse_choice(reply.content))
            if verdicts[-1] != win:
                outcome = "unparsed" if verdicts[-1] is None else "lost"
                return {"rejected": rejected, "verdicts": verdicts, "outcome": outcome}
        return {"rejected": rejected, "verdicts": verdicts, "outcome": "kept"}


def curate_items(
    curator: Curator,
    items: Sequence[dict[str, Any]],
    ledger_path: Path,
    should_stop: Callable[[], bool],
    flush_s: float = 0.5,
) -> tuple[list[dict[str, Any]], int]:
    """Curate the items missing from the ledger; return (every finished record in item order, resumed).

    Finished records are appended to the ledger (fsynced) every ``flush_s`` seconds and at the end.
    Stops taking new items once ``should_stop()``; what finished is in the ledger either way.
    """
    from mcmdpo.batch.resumable import BatchLedger

    ledger = BatchLedger(ledger_path)
    done = {r["id"]: r for r in ledger.resume()}
    resumed = len(done)
    pending = [it for it in items if it["id"] not in done]
    buffer: list[dict[str, Any]] = []

    def flush() -> None:
        ledger.append(buffer[:])
        buffer.clear()

    async def one(item: dict[str, Any]) -> None:
        if not should_stop():
            record = await curator.curate(item)
            done[record["id"]] = record
            buffer.append(record)

    async def flusher() -> None:
        while True:
            await asyncio.sleep(flush_s)
            flush()

    async def run_all() -> None:
        timer = asyncio.create_task(flusher())
        try:
            await gather_limited(pending, one, curator.spec.llm.concurrency)
        finally:
            timer.cancel()
            flush()

    curator.client.run(run_all())
    return [done[it["id"]] for it in items if it["id"] in done], resumed
