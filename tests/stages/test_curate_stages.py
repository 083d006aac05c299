"""The four curation stages through `mcmdpo submit` (local executor) against a real OpenAI-compatible
server on 127.0.0.1 (tests.helpers.judge.JudgeServer with tests.helpers.curate.CurationRules): every
funnel counter, swapped verification kept / regenerated / dropped, 429s and timeouts, resume after
SIGKILL mid-shard without answering any request twice, and the API key in no file of the run.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcmdpo.batch.artifacts import read_done, read_events
from mcmdpo.batch.launch import submit
from mcmdpo.batch.recipe import load_recipe
from tests.helpers import curate as fx
from tests.helpers.judge import JudgeServer

KEY_ENV, SECRET = "MCMDPO_TEST_CURATE_KEY", "sk-curate-secret-4242"

RECIPE = """
[run]
name = "{name}"
output_root = "{runs}"

[cluster]
executor = "local"
max_parallel = 2

[curate]
raw_file = "{raw}"
images = "{images}"
shards = 2
on_bad_record = "skip"
rejected_temperature = 0.9

[curate.llm]
base_url = "{url}"
model = "curator"
api_key_env = "{key_env}"
concurrency = 4
timeout_s = 1.5
backoff_s = 0.01
max_retries = 3
cache_dir = "{cache}"

[curate.split]
sft = 0.5
preference = 0.3
test = 0.2
"""

OUTPUTS = ("sft.json", "preference.json", "test.jsonl", "funnel.json", "duplicates.json")


def write(tmp: Path, name: str, raw: Path, images: Path, url: str) -> Path:
    path = tmp / f"{name}.toml"
    fields = {"name": name, "runs": tmp / "runs", "raw": raw, "images": images, "url": url}
    path.write_text(RECIPE.format(**fields, key_env=KEY_ENV, cache=tmp / f"cache-{name}"))
    return path


def task_dir(run: Path, stage: str) -> Path:
    (folder,) = [d for d in (run / stage).iterdir() if d.is_dir()]
    return folder


def outputs(run: Path) -> dict[str, str]:
    folder = task_dir(run, "curate_split")
    return {name: (folder / name).read_text() for name in OUTPUTS}


def assert_no_secret(*folders: Path) -> None:
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)


def check_outputs(run: Path, good: list[dict]) -> None:
    folder = task_dir(run, "curate_split")
    funnel = json.loads((folder / "funnel.json").read_text())
    steps = {s["step"]: s for s in funnel["steps"]}
    assert steps["input"]["remaining"] == 28
    assert {k: s["dropped"] for k, s in steps.items() if k != "input"} == fx.EXPECTED_STEPS
    assert funnel["steps"][-1]["remaining"] == 13 and funnel["splits"] == {
        "sft": 7,
        "preference": 4,
        "test": 2,
    }
    assert funnel["rejected"] == fx.EXPECTED_REJECTED
    assert funnel["names"] == {
        "methods": ["llm"],
        "records_with_names": 2,
        "names_replaced": 2,
        "unparsed_replies": 0,
    }
    assert funnel["grammar"]["alt_text_corrected"] == 1 and funnel["grammar"]["context_corrected"] == 0
    sft = json.loads((folder / "sft.json").read_text())
    pref = json.loads((folder / "preference.json").read_text())
    test = [json.loads(line) for line in (folder / "test.jsonl").read_text().splitlines()]
    expected = {s: [r["id"] for r, want in zip(good, fx.SPLITS, strict=True) if want == s] for s in fx.SPLITS}
    assert [r["id"] for r in sft] == expected["sft"]
    assert [r["id"] for r in pref] == [
        i for i in expected["preference"] if i != good[2]["id"]
    ]  # xerus dropped
    assert [r["id"] for r in test] == expected["test"]
    soup = next(r for r in sft if r["idx"] == 7)
    assert soup["conversations"][1]["value"] == fx.ALTS[7].replace("teh", "the")
    assert (
        soup["conversations"][0]["value"] == "<image>\nGiven an image and context, generate alt-text for "
        f"the image.\nContext:\n{fx.CONTEXTS[7]}"
    )
    yak = next(r for r in pref if r["idx"] == 1)
    assert yak["question"].endswith(
        "Look what [person] made for the bake sale this weekend, everyone loved it."
    )
    assert yak["rejected"] == "suboptimal take 2: a photo of something" and yak["ds_name"] == "curated"
    assert json.loads(yak["text"])["chosen"] == yak["chosen"] == fx.ALTS[1]
    for name in (
        [r["image"] for r in sft] + [r["image"]["path"] for r in pref] + [r["image_path"] for r in test]
    ):
        assert (folder / "images" / name).is_file()
    manifest = json.loads((folder / "curate.json").read_text())
    assert manifest["served_models"] == [fx.SERVED] and manifest["llm"]["api_key_env"] == KEY_ENV
    clusters = json.loads((folder / "duplicates.json").read_text())["clusters"]
    assert clusters["image"][0]["dropped"] == [{"position": 26, "id": "near-image"}]


@pytest.mark.slow
def test_curate_pipeline_then_kill_and_resume_answers_nothing_twice(tmp_path):
    raw, images, good = fx.make_raw(tmp_path / "data")
    rules = fx.CurationRules()
    with JudgeServer(rules) as server:
        first = load_recipe(write(tmp_path, "a", raw, images, server.url))
        assert submit(first).ok
        check_outputs(first.run_dir, good)
        check_funnel_report(first.run_dir, tmp_path / "report")
        answered = rules.answered.copy()
        requests = len(server.requests)
        assert submit(first).ok and len(server.requests) == requests  # everything DONE: no request
        assert_no_secret(first.run_dir, tmp_path / "cache-a")

        rules.answered.clear()
        rules.generations.clear()
        server.attempts.clear()
        rules.gate = int(sum(answered.values()) * 0.6)
        path = write(tmp_path, "b", raw, images, server.url)
        run = load_recipe(path).run_dir
        job = subprocess.Popen([sys.executable, "-m", "mcmdpo", "submit", str(path)], env=dict(os.environ))
        assert rules.gate_hit.wait(120), "the curate stage never reached the gate"
        time.sleep(1.5)  # the ledger is flushed every 0.5 s
        killed = kill_running(run, "curate")
        assert killed and job.wait(120) == 1
        rules.release()
        second = submit(load_recipe(path))
        assert second.ok
    assert rules.answered == answered  # resumed + killed run answered exactly what one run needs
    assert outputs(run) == outputs(first.run_dir)
    reports = [json.loads((d / "curate.json").read_text()) for d in (run / "curate").iterdir()]
    assert sum(r["resumed_items"] for r in reports) > 0 and sum(r["requests"]["cached"] for r in reports) > 0
    assert_no_secret(run, tmp_path / "cache-b")


def check_funnel_report(run: Path, out: Path) -> None:
    """`mcmdpo report` on a curation-only run: the funnel as markdown, CSV and a PNG."""
    done = subprocess.run([sys.executable, "-m", "mcmdpo", "report", str(run), "--out", str(out)],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    funnel = json.loads((task_dir(run, "curate_split") / "funnel.json").read_text())
    with open(out / "funnel.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    steps = [(r["step"], int(r["remaining"]), r["dropped"]) for r in rows if r["section"] == "step"]
    assert steps == [(s["step"], s["remaining"], str(s.get("dropped", ""))) for s in funnel["steps"]]
    assert {r["step"]: int(r["remaining"]) for r in rows if r["section"] == "split"} == funnel["splits"]
    llm = {r["step"]: int(r["remaining"]) for r in rows if r["section"] == "llm"}
    assert llm["rejected texts generated"] == fx.EXPECTED_REJECTED["generated"]
    assert llm["names replaced"] == 2 and llm["alt-texts corrected"] == 1
    markdown = (out / "funnel.md").read_text()
    assert "| raw records |  | 28 | 100.0% |" in markdown
    assert "| no verified rejected text | 1 | 13 | 46.4% |" in markdown
    assert "Output splits: sft 7, preference 4, test 2." in markdown
    png = out / "figures" / f"funnel_{run.name}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert not (out / "table.md").exists()  # nothing scored: a funnel-only report


def kill_running(run: Path, stage: str) -> list[int]:
    """SIGKILL the processes of ``stage``'s tasks that started and are not DONE."""
    pids = []
    for folder in (run / stage).iterdir():
        starts = [e for e in read_events(folder / "events.jsonl") if e["event"] == "start"]
        if starts and read_done(folder / "DONE") is None:
            os.kill(starts[-1]["pid"], signal.SIGKILL)
            pids.append(starts[-1]["pid"])
    return pids
