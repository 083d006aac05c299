"""A user's stop reaches every task it started, and the submit lock is judged by pid, start time and
host. Real processes and signals: a SIGINT to the submit's whole process group (a terminal's Ctrl-C),
`mcmdpo cancel` of live local tasks after the submit died, and of queued SLURM jobs; a lock left by
a process whose pid was reused; an unreadable lock; a full disk during a submit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcmdpo.batch.artifacts import read_events
from mcmdpo.batch.recipe import load_recipe
from mcmdpo.batch.scheduler import pid_alive, process_start, same_process, slurm_states
from tests.helpers.paths import REPO
from tests.helpers.recipes import BASE

CLI = [sys.executable, "-m", "mcmdpo"]
SLOW = BASE.replace("steps = 3", "steps = 4\nstep_s = 1.5")  # 4 tasks x ~6 s, two at a time
SLURM = '\n[cluster]\nexecutor = "slurm"\nprofile = "local"\n'


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=REPO, **kw)


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def task_events(run_dir: Path, stage: str = "count") -> dict[str, list[dict]]:
    folder = run_dir / stage
    if not folder.is_dir():
        return {}
    return {d.name: read_events(d / "events.jsonl") for d in folder.iterdir() if not d.name.startswith(".")}


def running_tasks(run_dir: Path) -> dict[str, tuple[int, str]]:
    """task id -> (pid, start) of every task whose last event is a start."""
    out = {}
    for task, events in task_events(run_dir).items():
        if events and events[-1]["event"] == "start":
            out[task] = (int(events[-1]["pid"]), events[-1].get("start"))
    return out


def done_tasks(run_dir: Path) -> set[str]:
    return {t for t in task_events(run_dir) if (run_dir / "count" / t / "DONE").exists()}


def assert_stopped_for_good(run_dir: Path, live: dict[str, tuple[int, str]], done_before: set[str]) -> None:
    """Every task process that ran is gone, and none writes DONE later (waited past its run time)."""
    for task, (pid, start) in live.items():
        assert not same_process(pid, start), f"task {task} (pid {pid}) still runs after the stop"
    time.sleep(8.0)  # longer than a task's remaining run time: a survivor would finish now
    assert done_tasks(run_dir) <= done_before | set(), "a task finished after the stop"
    for task, events in task_events(run_dir).items():
        names = [e["event"] for e in events]
        if "cancelled" in names:
            assert "done" not in names[names.index("cancelled") :], f"{task}: done after cancelled"


def start_submit(path: Path) -> subprocess.Popen:
    """`mcmdpo submit` in a session of its own, as a shell would run it in a terminal."""
    return subprocess.Popen(
        [*CLI, "submit", str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_ctrl_c_to_the_process_group_kills_every_task(write_recipe):
    path = write_recipe(SLOW)
    run_dir = load_recipe(path).run_dir
    proc = start_submit(path)
    wait_for(lambda: len(running_tasks(run_dir)) >= 1, timeout=180)
    live, done_before = running_tasks(run_dir), done_tasks(run_dir)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C: the submit and its children
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert_stopped_for_good(run_dir, live, done_before)
    status = json.loads(cli("status", str(run_dir), "--json").stdout)
    assert status["stages"][0]["running"] == 0 and status["stages"][0]["done"] < 4
    assert cli("submit", str(path)).returncode == 0  # and a re-submit finishes the rest
    assert len(done_tasks(run_dir)) == 4


def test_cancel_kills_the_tasks_a_killed_submit_left_running(write_recipe):
    path = write_recipe(SLOW)
    run_dir = load_recipe(path).run_dir
    proc = start_submit(path)
    wait_for(lambda: len(running_tasks(run_dir)) >= 1, timeout=180)
    proc.kill()  # SIGKILL: the submit cannot stop anything; its task processes live on
    proc.wait()
    live, done_before = running_tasks(run_dir), done_tasks(run_dir)
    assert all(same_process(pid, start) for pid, start in live.values())
    result = cli("cancel", str(run_dir))
    assert result.returncode == 0, result.stderr
    stopped = sum("stopped count/" in line for line in result.stdout.splitlines())
    assert stopped >= len(live)  # and any job started too recently to have written its start event
    assert_stopped_for_good(run_dir, live, done_before)
    assert "nothing" in cli("cancel", str(run_dir)).stdout.lower()  # a second cancel finds nothing


def test_a_lock_whose_pid_was_reused_is_taken_over_and_never_signalled(write_recipe):
    path = write_recipe(BASE)
    run_dir = load_recipe(path).run_dir
    run_dir.mkdir(parents=True)
    stranger = subprocess.Popen(["sleep", "3600"])  # an unrelated process that now has the lock's pid
    lock = {"pid": stranger.pid, "host": os.uname().nodename, "start": "other-boot:1", "time": 0}
    try:
        (run_dir / "submit.lock").write_text(json.dumps(lock))
        result = cli("submit", str(path))
        assert result.returncode == 0, result.stderr
        assert f"taking over the submit lock of {run_dir}: its holder (pid {stranger.pid}" in result.stderr
        (run_dir / "submit.lock").write_text(json.dumps(lock))
        cancel = cli("cancel", str(run_dir))
        assert cancel.returncode == 0 and "interrupted the submission" not in cancel.stdout
        time.sleep(0.5)
        assert stranger.poll() is None  # the unrelated process was never signalled
    finally:
        stranger.kill()
        stranger.wait()


def test_a_live_lock_is_judged_by_its_start_time(tmp_path):
    me = process_start(os.getpid())
    assert me is not None and same_process(os.getpid(), me)
    assert not same_process(os.getpid(), "another-boot:12345")
    assert not pid_alive(0) and not same_process(0, None)


@pytest.mark.parametrize("content", [b"", b'{"pid": 1, "ho', b"\xff\xfe garbage", b"[1, 2]"])
def test_an_unreadable_lock_is_taken_over_at_once(write_recipe, content):
    path = write_recipe(BASE)
    run_dir = load_recipe(path).run_dir
    run_dir.mkdir(parents=True)
    (run_dir / "submit.lock").write_bytes(content)
    result = cli("submit", str(path))
    assert result.returncode == 0, result.stderr
    assert "unreadable lock file" in result.stderr
    assert not (run_dir / "submit.lock").exists()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs (root only; skipped elsewhere), unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> None:
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass


def test_a_full_disk_during_submit_is_one_line_and_leaves_no_lock(write_recipe, small_tmpfs):
    path = write_recipe(BASE.replace('output_root = "@RUNS@"', f'output_root = "{small_tmpfs}"'))
    fill(small_tmpfs)
    result = cli("submit", str(path))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "No space left on device" in line and str(small_tmpfs) in line
    assert not (small_tmpfs / "t" / "submit.lock").exists()
    (small_tmpfs / "filler").unlink()
    assert cli("submit", str(path)).returncode == 0  # room again: the run goes through


def test_a_full_disk_during_a_task_is_one_line_in_status(write_recipe, small_tmpfs):
    body = BASE.replace('output_root = "@RUNS@"', f'output_root = "{small_tmpfs}"')
    path = write_recipe(body.replace("steps = 3", "steps = 3\npad_bytes = 4000000"))
    result = cli("submit", str(path))
    assert result.returncode != 0
    status = json.loads(cli("status", str(small_tmpfs / "t"), "--json").stdout)
    failed = [t for s in status["stages"] for t in s["task_status"] if t["state"] == "failed"]
    assert failed and all("No space left on device" in t["error"] for t in failed)
    assert all("\n" not in t["error"] and "Traceback" not in t["error"] for t in failed)


@pytest.mark.slurm
@pytest.mark.slow
def test_cancel_scancels_every_queued_slurm_job(slurm_cluster, write_recipe):
    path = write_recipe(SLOW.replace("step_s = 1.5", "step_s = 20") + SLURM)
    run_dir = load_recipe(path).run_dir
    assert cli("submit", str(path)).returncode == 0
    jobs = set()
    for record in (run_dir / "submissions").glob("*.json"):
        jobs |= set(json.loads(record.read_text())["jobs"].values())
    wait_for(lambda: any(s.startswith("RUNNING") for s in slurm_states(jobs).values()), timeout=120)
    result = cli("cancel", str(run_dir))
    assert result.returncode == 0 and "scancel" in result.stdout
    wait_for(
        lambda: not any(s.split()[0] in ("RUNNING", "PENDING") for s in slurm_states(jobs).values()), 120
    )
    assert not any((run_dir / "sum").glob("*/DONE"))  # the dependent array never ran
