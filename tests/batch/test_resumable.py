"""The resumable-task toolkit: atomic folders, reuse by key, the test pause (ledger: other file)."""

from __future__ import annotations

import os
import time

import pytest

from mcmdpo.batch.resumable import (
    PAUSE_ENV,
    atomic_dir,
    copy_atomic,
    link_atomic,
    mark_complete,
    pause_for_tests,
    reusable,
)


def test_atomic_dir_replaces_only_when_the_block_succeeds(tmp_path):
    final = tmp_path / "out" / "model"
    (tmp_path / "out").mkdir()
    stale = tmp_path / "out" / ".model.12345.tmp"  # left by a killed attempt
    stale.mkdir()
    with atomic_dir(final) as tmp:
        assert tmp.name.startswith(".model.") and not final.exists() and not stale.exists()
        (tmp / "a.txt").write_text("one")
    assert (final / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("boom")
    assert (final / "a.txt").read_text() == "one" and sorted(p.name for p in final.parent.iterdir()) == [
        "model"
    ]
    with atomic_dir(final) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]  # a finished folder is replaced whole


def test_copy_and_link_atomic(tmp_path):
    src = tmp_path / "src.txt"
    src.write_text("data")
    copy_atomic(src, tmp_path / "sub" / "dst.txt")
    assert (tmp_path / "sub" / "dst.txt").read_text() == "data"
    copy_atomic(tmp_path / "missing.txt", tmp_path / "empty.txt")
    assert (tmp_path / "empty.txt").read_text() == ""
    target = tmp_path / "folder"
    target.mkdir()
    link = tmp_path / "link"
    link.mkdir()  # a real folder where the link goes (an older layout) is replaced
    link_atomic(link, target)
    assert link.is_symlink() and os.readlink(link) == str(target)
    link_atomic(link, src)
    assert os.readlink(link) == str(src) and not list(tmp_path.glob(".link*"))


def test_reusable_needs_the_same_key_and_every_output(tmp_path):
    work, out = tmp_path / ".work", tmp_path
    (out / "a.h5").write_text("x")
    assert reusable(work, out, "k1") is None
    assert mark_complete(work, "k1", ["a.h5"], {"n": 3}) == ["a.h5"]
    assert reusable(work, out, "k1") == {"key": "k1", "outputs": ["a.h5"], "summary": {"n": 3}}
    assert reusable(work, out, "k2") is None  # the inputs changed: rebuild
    (out / "a.h5").unlink()
    assert reusable(work, out, "k1") is None  # an output went missing: rebuild
    (work / "complete.json").write_text("{torn")
    assert reusable(work, out, "k1") is None


class _Ctx:
    def __init__(self, attempt: int = 0, stop_after: float | None = None):
        self.attempt, self.start, self.stop_after = attempt, time.time(), stop_after

    def should_checkpoint(self) -> bool:
        return self.stop_after is not None and time.time() - self.start >= self.stop_after


def test_pause_for_tests_sleeps_on_the_first_attempt_only_and_wakes_on_stop(monkeypatch):
    monkeypatch.setenv(PAUSE_ENV, "300")
    started = time.time()
    pause_for_tests(_Ctx())
    assert time.time() - started >= 0.29
    started = time.time()
    pause_for_tests(_Ctx(attempt=1))  # requeued or re-run: never paused
    monkeypatch.setenv(PAUSE_ENV, "60000")
    pause_for_tests(_Ctx(stop_after=0.1))  # a stop request ends the pause
    assert time.time() - started < 5
    monkeypatch.delenv(PAUSE_ENV)
    started = time.time()
    pause_for_tests(_Ctx())
    assert time.time() - started < 0.05
