"""The batch ledger (append + fsync, resume, torn last line, corruption) and prediction files."""

from __future__ import annotations

import json

import pytest

from mcmdpo.batch.resumable import BatchLedger, LedgerError
from mcmdpo.evaluation.metrics.predictions import (
    PredictionError,
    merge_predictions,
    read_predictions,
    write_predictions,
)


def test_append_and_resume(tmp_path):
    ledger = BatchLedger(tmp_path / "p.jsonl")
    assert ledger.resume() == []
    ledger.append([{"id": 1, "response": "a"}, {"id": "2", "response": "ü"}])
    ledger.append([{"id": 3, "response": "c\nd"}])
    assert [r["id"] for r in BatchLedger(tmp_path / "p.jsonl").resume()] == [1, "2", 3]
    assert (tmp_path / "p.jsonl").read_text(encoding="utf-8").count("\n") == 3


def test_torn_last_line_is_dropped_and_cut_from_the_file(tmp_path):
    path = tmp_path / "p.jsonl"
    good = '{"id": 1, "response": "a"}\n{"id": 2, "response": "b"}\n'
    path.write_text(good + '{"id": 3, "resp')
    records = BatchLedger(path).resume()
    assert [r["id"] for r in records] == [1, 2]
    assert path.read_text() == good  # the next append starts on a clean line
    BatchLedger(path).append([{"id": 3, "response": "c"}])
    assert [r["id"] for r in read_predictions(path)] == [1, 2, 3]


def test_complete_json_without_newline_counts_as_torn(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}')
    assert [r["id"] for r in BatchLedger(path).resume()] == [1]
    assert path.read_text() == '{"id": 1}\n'


def test_malformed_middle_line_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 1}\n{"id": 2,,}\n{"id": 3}\n')
    with pytest.raises(LedgerError, match=r"p.jsonl:2: malformed"):
        BatchLedger(path).resume()
    path.write_text('{"id": 1}\n{"response": "x"}\n')
    with pytest.raises(LedgerError, match=r"p.jsonl:2: ledger record has no 'id'"):
        BatchLedger(path).resume()


def test_read_predictions_checks_required_fields(tmp_path):
    path = tmp_path / "p.jsonl"
    write_predictions(path, [{"id": 1, "response": "a", "chosen": "b"}, {"id": 2, "response": "a"}])
    with pytest.raises(PredictionError, match=r"p.jsonl:2: missing field\(s\) chosen"):
        read_predictions(path, required=("response", "chosen"))


def test_merge_in_shard_order_and_check_ids(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_predictions(a, [{"id": 1, "r": "x"}, {"id": 2, "r": "y"}])
    write_predictions(b, [{"id": 3, "r": "z"}])
    out = tmp_path / "m" / "merged.jsonl"
    assert merge_predictions([a, b], out, expected_ids=[1, 2, 3]) == 3
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [1, 2, 3]
    with pytest.raises(PredictionError, match="do not cover the benchmark: 1 missing"):
        merge_predictions([a, b], out, expected_ids=[1, 2, 3, 4])
    with pytest.raises(PredictionError, match="different order"):
        merge_predictions([b, a], out, expected_ids=[1, 2, 3])
    with pytest.raises(PredictionError, match="overlapping shards"):
        merge_predictions([a, a], out)
    write_predictions(b, [{"id": "3", "r": "z"}])  # "3" is not 3
    with pytest.raises(PredictionError, match="1 unexpected"):
        merge_predictions([a, b], out, expected_ids=[1, 2, 3])


class _Ctx:
    """What BatchLedger.run reads of a task context."""

    attempt = 0

    def __init__(self, stop_after: int | None = None):
        self.calls, self.stop_after = 0, stop_after

    def should_checkpoint(self) -> bool:
        return self.stop_after is not None and self.calls >= self.stop_after

    def interrupted(self) -> Exception:
        return RuntimeError("interrupted")


def test_keyed_ledger_stops_between_batches_and_resumes_with_the_same_key(tmp_path):
    ctx = _Ctx(stop_after=2)

    def compute(batch):
        ctx.calls += 1
        return [{"id": i, "v": i * 0.1} for i in batch]

    ledger = BatchLedger.keyed(tmp_path, "work", "k" * 20)
    with pytest.raises(RuntimeError, match="interrupted"):
        ledger.run(ctx, [[0, 1], [2, 3], [4]], compute)
    assert [r["id"] for r in BatchLedger.keyed(tmp_path, "work", "k" * 20).resume()] == [0, 1, 2, 3]
    assert BatchLedger.keyed(tmp_path, "work", "k" * 20).resume()[1]["v"] == 0.1  # floats round-trip exactly
    other = BatchLedger.keyed(tmp_path, "work", "other-key-0000000")
    assert other.resume() == [] and [p.name for p in tmp_path.iterdir()] == []  # other keys' ledgers go
