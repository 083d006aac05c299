"""What a re-submit, verify and the commands promise on damaged or odd run dirs: a same-size
overwrite is found and re-made, a copied run dir is read where it is, unreadable DONE / events / plan
files are one line (never a traceback), and user errors are caught before anything is queued."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading

import pytest

from mcmdpo.batch.launch import submit
from mcmdpo.batch.recipe import load_recipe
from tests.helpers.paths import REPO
from tests.helpers.recipes import BASE

CLI = [sys.executable, "-m", "mcmdpo"]


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=REPO, **kw)


def one_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    return line


@pytest.fixture
def finished(write_recipe):
    recipe = load_recipe(write_recipe(BASE))
    report = submit(recipe)
    assert report.ok
    task = report.plan.stage("count").tasks[1]
    return recipe, recipe.run_dir / "count" / task.task_id


def test_a_same_size_overwrite_is_found_and_remade_by_the_next_submit(finished):
    recipe, folder = finished
    result = folder / "result.json"
    good = result.read_bytes()
    damaged = good[:4] + b"X" * 8 + good[12:]  # same size, other bytes (a flipped block on disk)
    assert len(damaged) == len(good) and damaged != good
    result.write_bytes(damaged)
    checked = cli("verify", str(recipe.run_dir))
    assert checked.returncode == 1 and "content changed (sha256 differs" in checked.stdout
    again = submit(recipe)
    assert again.ok and [s.submitted for s in again.stages] == [1, 0]  # re-made; nothing else re-ran
    assert any("content changed" in line for line in again.set_aside)
    assert json.loads(result.read_bytes())["steps"] == 3  # re-made whole (its pid differs: a new run)
    assert cli("verify", str(recipe.run_dir)).returncode == 0
    assert [s.submitted for s in submit(recipe).stages] == [0, 0]  # intact now: nothing to do


def test_an_intact_resubmit_hashes_nothing(finished, monkeypatch):
    recipe, _ = finished
    import mcmdpo.batch.integrity as integrity

    hashed = []
    monkeypatch.setattr(integrity, "file_hash", lambda path: hashed.append(path) or "x")
    assert [s.submitted for s in submit(recipe).stages] == [0, 0]
    assert hashed == []  # every output's stamp (size, mtime) matched: one stat each


def test_a_copied_run_dir_is_read_where_it_is(finished, tmp_path):
    recipe, folder = finished
    copy = tmp_path / "copy"
    shutil.copytree(recipe.run_dir, copy)
    copied = copy / "count" / folder.name / "result.json"
    copied.write_bytes(copied.read_bytes()[:-3])  # damage the copy only
    checked = cli("verify", str(copy))
    assert checked.returncode == 1 and str(copied) in checked.stdout
    assert str(recipe.run_dir) not in checked.stdout
    status = json.loads(cli("status", str(copy), "--json").stdout)
    assert status["run_dir"] == str(copy) and all(
        t["dir"].startswith(str(copy)) for s in status["stages"] for t in s["task_status"]
    )
    assert cli("verify", str(recipe.run_dir)).returncode == 0  # the original is untouched


def test_a_done_file_with_bad_json_is_one_line_and_remade(finished):
    recipe, folder = finished
    (folder / "DONE").write_text('{"stage": "count", ')
    for command in ("status", "verify"):
        result = cli(command, str(recipe.run_dir))
        assert "Traceback" not in result.stderr + result.stdout
        assert "unreadable DONE marker" in result.stdout
    again = cli("submit", str(recipe.path))
    assert again.returncode == 0, again.stderr
    assert json.loads((folder / "DONE").read_text())["stage"] == "count"


def test_damaged_events_and_a_foreign_plan_are_one_line(finished, tmp_path):
    recipe, folder = finished
    with open(folder / "events.jsonl", "ab") as f:
        f.write(b"\xff\xfe\x00garbage\n{not json}\n")
    result = cli("status", str(recipe.run_dir))
    assert result.returncode == 0 and "Traceback" not in result.stderr
    other = tmp_path / "other"
    other.mkdir()
    (other / "plan.json").write_text(json.dumps({"tool": "someone else's", "steps": [1, 2]}))
    for command in ("status", "verify", "cancel"):
        line = one_line(cli(command, str(other)))
        assert line.startswith(f"error: {other / 'plan.json'}: not a plan written by mcmdpo")


def test_set_cannot_add_a_stage(write_recipe):
    line = one_line(cli("validate", str(write_recipe(BASE)), "--set", "sft.lr=1"))
    assert line == (
        "error: --set sft.lr=1: sft: the recipe has no [sft] section; "
        "--set changes a recipe, it adds no stage"
    )


def test_a_missing_api_key_variable_stops_the_submit_before_anything_is_queued(write_recipe, monkeypatch):
    body = BASE.replace(
        "[count]\n", '[count]\nllm = { model = "m", api_key_env = "MCMDPO_TEST_UNSET_KEY" }\n'
    )
    monkeypatch.delenv("MCMDPO_TEST_UNSET_KEY", raising=False)
    path = write_recipe(body)
    assert cli("submit", str(path), "--dry-run").returncode == 0  # planning needs no key
    result = cli("submit", str(path))
    assert result.returncode == 2
    line = one_line(result)
    assert "count.llm.api_key_env: environment variable $MCMDPO_TEST_UNSET_KEY (the API key)" in line
    assert not (load_recipe(path).run_dir / "count").exists()  # nothing ran


def test_score_names_the_file_on_binary_garbage_and_refuses_duplicate_ids(tmp_path):
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xd8")
    line = one_line(cli("score", str(garbage), "--out", str(tmp_path / "m.json")))
    assert line.startswith(f"error: {garbage}:1: not UTF-8 text (byte 0x89)")
    twice = tmp_path / "twice.jsonl"
    rows = [{"id": 1, "response": "a", "chosen": "a"}, {"id": 2, "response": "b", "chosen": "b"}]
    twice.write_text("\n".join(json.dumps(r) for r in [*rows, rows[0]]) + "\n")
    line = one_line(cli("score", str(twice), "--out", str(tmp_path / "m.json")))
    assert line == f"error: {twice}:3: id 1 repeats the record of line 1"


def test_too_many_shards_for_the_records_is_refused(write_recipe):
    body = (
        '[run]\nname = "d"\noutput_root = "@RUNS@"\n[data]\nnum_train = 8\nnum_test = 2\n'
        "[model]\n[precompute]\nnum_shards = 100000\n"
    )
    line = one_line(cli("submit", str(write_recipe(body)), "--dry-run"))
    assert (
        "precompute.num_shards: 100000 shards for 8 records would plan 99992 empty tasks; at most 8" in line
    )


def test_runs_on_a_missing_root_is_an_error(tmp_path):
    result = cli("runs", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert one_line(result) == f"error: {tmp_path / 'nope'}: no such folder: {tmp_path / 'nope'} " + (
        "(run dirs are made by `mcmdpo submit`)"
    )


def test_help_keeps_bracketed_words():
    text = cli("score", "--help", env={**os.environ, "COLUMNS": "200"}).stdout
    assert "as [score.nltk] tagger" in text and "(default: )" not in text


def test_the_results_table_never_cuts_a_header_word():
    from rich.console import Console

    from mcmdpo.report.estimators import METRICS
    from mcmdpo.report.layouts import select_columns
    from mcmdpo.report.tables import Cell, ResultTable, TableRow, render_rich

    present = {("test", m.protocol, m.name) for m in METRICS if m.kind == "altext"}
    groups = select_columns("auto", ["test"], present)
    cells = {c.key: Cell((12.34,)) for g in groups for c in g.columns}
    table = ResultTable(groups, [TableRow("+MCM-DPO", "preference", "result", cells)], [])
    assert len(table.columns) >= 8
    console = Console(width=80, record=True, soft_wrap=True)
    console.print(render_rich(table))
    text = console.export_text()
    assert "ROUGE-L" in text and "…" not in text


def test_coinciding_term_curves_are_drawn_once_and_labelled_together():
    from mcmdpo.report.figures import _coinciding

    nan = float("nan")
    series = {"rpo": [1.0, nan], "rewards": [1.0, nan], "vpo": [0.5, 0.6], "cpo": [0.5, 0.6], "x": [0.0, 0.1]}
    assert _coinciding(series, list(series)) == [["rpo", "rewards"], ["vpo", "cpo"], ["x"]]


class _Garbage(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b'{"choices": [{"message": {"content": "caf\xe9"}}]}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_non_utf8_reply_is_one_clear_error(tmp_path):
    from mcmdpo.llm import LLMClient, LLMError, LLMSpec

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spec = LLMSpec(
            base_url=f"http://127.0.0.1:{server.server_port}/v1",
            model="m",
            api_key_env="",
            max_retries=1,
            backoff_s=0.01,
        )
        client = LLMClient(spec, cache_dir=tmp_path / "cache", where="test")
        with pytest.raises(LLMError) as info:
            client.complete([{"role": "user", "content": "hi"}])
        message = str(info.value)
        assert "\n" not in message and "the body is not UTF-8 JSON" in message
    finally:
        server.shutdown()


def test_the_judge_key_is_an_environment_problem_of_the_score_section(monkeypatch):
    from mcmdpo.stages.score import ScoreSpec

    monkeypatch.delenv("MCMDPO_TEST_UNSET_KEY", raising=False)
    spec = ScoreSpec.model_validate({"judge": {"model": "m", "api_key_env": "MCMDPO_TEST_UNSET_KEY"}})
    assert [key for key, _ in spec.environment_problems()] == ["judge.api_key_env"]
    monkeypatch.setenv("MCMDPO_TEST_UNSET_KEY", "k")
    assert spec.environment_problems() == []
