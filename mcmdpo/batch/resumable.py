"""What keeps a task resumable, in one place: atomic outputs, reuse by key, the batch ledger, a test pause.

Every stage builds on these four pieces instead of writing its own:

- **Atomic outputs**: :func:`atomic_dir` (a folder built under a hidden temporary name next to its final
  place, renamed when complete), :func:`copy_atomic` and :func:`link_atomic` (files and symbolic links
  replaced in one rename). Files use :func:`mcmdpo.batch.artifacts.atomic_path` / ``write_json_atomic``.
- **Reuse a complete output whose key matches**: a task that finished its outputs but died before the
  runtime wrote ``DONE`` records ``.work/complete.json`` (:func:`mark_complete`: the key of everything
  that decided the content, the outputs, the summary); the next attempt calls :func:`reusable` and
  returns the same outputs without redoing the work. A different key (changed inputs) rebuilds.
- **The batch ledger** (:class:`BatchLedger`): results of finished batches appended as JSON lines and
  fsynced; a restarted task resumes after the last complete line (a torn last line is cut), and
  :meth:`BatchLedger.run` stops between batches when the scheduler asks the job to stop
  (``ctx.should_checkpoint()``), so nothing is lost on preemption.
- **One test hook**: :func:`pause_for_tests` sleeps ``MCMDPO_TEST_PAUSE_MS`` milliseconds after each
  unit of work (sample, batch, optimizer step) of a task's first attempt, waking early on a stop
  request, so tests can kill or time out a task mid-way.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mcmdpo.batch.artifacts import apply_umask, read_json, write_json_atomic
from mcmdpo.batch.errors import InputError

COMPLETE = "complete.json"
PAUSE_ENV = "MCMDPO_TEST_PAUSE_MS"


# ---------------------------------------------------------------- atomic outputs


def remove_path(path: Path) -> None:
    """Remove a file, a symbolic link or a folder tree (nothing if it does not exist)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _temp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}.tmp")


def remove_stale_temps(final: Path) -> None:
    """Hidden temporaries of earlier, killed attempts at ``final`` (``.<name>.<pid>.tmp``)."""
    for stale in final.parent.glob(f".{final.name}.*.tmp"):
        remove_path(stale)


@contextlib.contextmanager
def atomic_dir(final: Path | str) -> Iterator[Path]:
    """Yield an empty hidden folder next to ``final``; on success it replaces ``final`` in one rename.

    Stale temporaries of killed attempts are removed first; on failure the temporary goes too and
    ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final)
    tmp = _temp_name(final)
    tmp.mkdir()
    try:
        yield tmp
        apply_umask(tmp)  # writers such as safetensors create 0600 files
        remove_path(final)  # an earlier attempt finished it but died before DONE
        os.replace(tmp, final)
    finally:
        remove_path(tmp)


def copy_atomic(src: Path | str, dst: Path | str) -> None:
    """Copy a file (an empty one when ``src`` does not exist) and rename it into place."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(dst)
    shutil.copyfile(src if Path(src).exists() else os.devnull, tmp)
    os.replace(tmp, dst)


def link_atomic(link: Path | str, target: Path | str) -> None:
    """Point the symbolic link ``link`` at ``target``, replacing whatever is there in one rename."""
    link = Path(link)
    tmp = _temp_name(link)
    remove_path(tmp)
    tmp.symlink_to(target, target_is_directory=Path(target).is_dir())
    if link.exists() and not link.is_symlink():
        remove_path(link)
    os.replace(tmp, link)


# ---------------------------------------------------------------- reuse by key


def reusable(work_dir: Path, out_dir: Path, key: str) -> dict[str, Any] | None:
    """The record of an earlier attempt that completed the same outputs (same ``key``), else None.

    Returns ``{"key", "outputs", "summary"}`` when ``.work/complete.json`` has this key and every
    output it lists still exists.
    """
    path = Path(work_dir) / COMPLETE
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    if not all((Path(out_dir) / name).exists() for name in record.get("outputs", [])):
        return None
    return record


def mark_complete(
    work_dir: Path, key: str, outputs: Sequence[str], summary: Mapping[str, Any] | None = None
) -> list[str]:
    """Record that ``outputs`` are complete for ``key``; returns ``outputs``."""
    record = {"key": key, "outputs": list(outputs), "summary": dict(summary or {})}
    write_json_atomic(Path(work_dir) / COMPLETE, record)
    return list(outputs)


# ---------------------------------------------------------------- the batch ledger


def dump_line(record: Mapping[str, Any]) -> str:
    """One JSONL line (UTF-8 text kept as is, newline-terminated; floats round-trip exactly)."""
    return json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n"


class LedgerError(InputError):
    """A ledger line that is not a complete record (corruption, not a torn write)."""


class BatchLedger:
    """Append-only JSONL file of records (each with an ``id``), durable after every append.

    ``BatchLedger.keyed(folder, name, key)`` names the file after ``key`` (what decides the records'
    content) and removes ledgers of other keys, so a task whose inputs changed starts afresh.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @classmethod
    def keyed(cls, folder: Path, name: str, key: str) -> BatchLedger:
        path = Path(folder) / f"{name}.{key[:16]}.jsonl"
        for other in Path(folder).glob(f"{name}.*.jsonl"):
            if other != path:
                other.unlink()
        return cls(path)

    def resume(self) -> list[dict[str, Any]]:
        """Records already written, in order; a torn last line is removed from the file."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        records, good_bytes = _parse_ledger(data, self.path)
        if good_bytes < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good_bytes)
                f.flush()
                os.fsync(f.fileno())
        return records

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append ``records`` and make them durable before returning."""
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(dump_line(r) for r in records)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def run(
        self,
        ctx: Any,
        batches: Sequence[Any],
        compute: Callable[[Any], Sequence[Mapping[str, Any]]],
        done: int = 0,
        total: int | None = None,
    ) -> None:
        """``append(compute(batch))`` for every batch. After each batch (the one in flight is kept),
        report progress (``done`` items before, ``total`` items), honour a stop request while batches
        remain (``raise ctx.interrupted()``: the ledger is already durable), and the test pause."""
        report = getattr(ctx, "progress", None)
        for number, batch in enumerate(batches, 1):
            self.append(compute(batch))
            done += len(batch)
            if report is not None:
                report(done, total)
            if ctx.should_checkpoint() and number < len(batches):
                raise ctx.interrupted()
            pause_for_tests(ctx)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _parse_ledger(data: bytes, path: Path) -> tuple[list[dict[str, Any]], int]:
    """Parse the newline-terminated lines; return the records and the byte length of that prefix.

    Whatever follows the last newline is a torn write (every append ends with a newline) and is
    not part of the prefix, even when it happens to parse.
    """
    complete, _, _tail = data.rpartition(b"\n")
    if not complete and not data.endswith(b"\n"):
        return [], 0
    records: list[dict[str, Any]] = []
    for number, raw in enumerate(complete.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LedgerError(f"malformed ledger line ({exc})", file=path, line=number) from None
        if not isinstance(record, dict):
            raise LedgerError(f"expected a JSON object (got {type(record).__name__})", file=path, line=number)
        if "id" not in record:
            raise LedgerError("ledger record has no 'id'", file=path, line=number)
        records.append(record)
    return records, len(complete) + 1


# ---------------------------------------------------------------- the test hook


def pause_for_tests(ctx: Any) -> None:
    """Test hook: sleep ``MCMDPO_TEST_PAUSE_MS`` after a unit of work of a task's first attempt.

    Wakes early when the scheduler asks the job to stop; a requeued or re-run task (``ctx.attempt``
    > 0, or a trainer that resumed) is never paused.
    """
    ms = float(os.environ.get(PAUSE_ENV, "0") or 0)
    if ms <= 0 or getattr(ctx, "attempt", 0) > 0:
        return
    until = time.time() + ms / 1000
    while time.time() < until and not ctx.should_checkpoint():
        time.sleep(min(0.05, max(0.0, until - time.time())))
