"""Two-node jobs on a real multi-node SLURM (``slurm/dev-cluster/start.sh --nodes 3``: node1-node3, one
CPU each, each in its own network namespace with its own address, host name and /etc/hosts; one
shared file system; started by the ``slurm_multinode_cluster`` fixture next to the single-node one).

One run goes through the chain on SLURM with two nodes x one task per training stage (gloo):
sft (ZeRO-3) -> preference (MCM-DPO, ZeRO-2, online reference) -> eval (2 shards) -> score -> report.
Its sft job is preempted mid-training by an ``urgent`` job pinned to its first node (rank 0's): USR2
on both nodes, a collective save at the next step boundary, requeue of the same job, and a resume on
the two other nodes, so rank 0 moves to another host and reads what both ranks wrote from the shared
run dir. The same recipe on one node x two tasks (local executor, uninterrupted) is the reference;
the weights must be bit-identical (fp32 on CPU, one thread per rank in both runs; the only
cross-rank reductions are 2-rank gloo sums, a + b, which are exact in either order).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mcmdpo.batch.artifacts import read_events, read_json
from mcmdpo.batch.launch import submit
from mcmdpo.batch.recipe import load_recipe
from tests.helpers.slurm import wait_settled
from tests.helpers.train_recipes import BASE, DEBUG, STEPS, assert_trained, clone, ranks, section
from tests.helpers.training import assert_bit_identical, last_log, logged, losses, run, task_dir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PAUSE_MS = 5000
"""After every step of the sft job's first attempt: time to preempt it mid-training."""
UPSTREAM = BASE.split("[reference]")[0]  # data, model, precompute (the reference is online)
SLURM = '[cluster]\nexecutor = "slurm"\nprofile = "local"\n[cluster.resources.default]\ncpus_per_task = 1\n'
SFT_Z3 = section("sft", 3, 4, 1, "keep_checkpoints = true\n")
PREF_Z2 = section("preference", 2, 4, 1, 'reference = "online"\n')
EVAL = """
[eval]
models = ["preference"]
benchmarks = ["test"]
shards = 2
batch_size = 2
max_new_tokens = 4
[score]
protocols = ["paper"]
[score.nltk]
tokenizer = "treebank"
tagger = "perceptron"
data_dirs = ["{nltk}"]
"""


def two_nodes(stage: str) -> str:
    return f"[cluster.resources.{stage}]\nnodes = 2\ntasks_per_node = 1\n"


def write(root: Path, name: str, *sections: str) -> Path:
    path = root / f"{name}.toml"
    path.write_text(UPSTREAM.format(root=root / "runs") + "\n".join(sections))
    return path


@contextlib.contextmanager
def paused(ms: int) -> Iterator[None]:
    """Jobs submitted inside inherit MCMDPO_TEST_PAUSE_MS (sbatch --export=ALL)."""
    os.environ["MCMDPO_TEST_PAUSE_MS"] = str(ms)
    try:
        yield
    finally:
        del os.environ["MCMDPO_TEST_PAUSE_MS"]


def preempt_rank0_node(task: Path, timeout_s: float = 240) -> dict[str, Any]:
    """Once the job of ``task`` has logged 2 steps: an urgent job on its first node preempts it."""
    deadline = time.time() + timeout_s
    while not logged(task / ".work" / "metrics.jsonl", 2):
        assert time.time() < deadline, f"the two-node job never reached step 2\n{last_log(task.parents[1])}"
        time.sleep(0.5)
    node = read_events(task / "events.jsonl")[0]["nodes"][0]
    urgent = ["sbatch", "--parsable", "-p", "urgent", "-w", node, "-c", "1", "-t", "10", "-o", "/dev/null"]
    out = subprocess.run([*urgent, "--wrap", "sleep 600"], capture_output=True, text=True, check=True)
    return {"node": node, "job": out.stdout.strip(), "at_step": len(logged_lines(task))}


def release_when_resumed(task: Path, job: str, timeout_s: float = 480) -> None:
    """The urgent job holds the preempted node until the requeued job has started again (on the
    other pair, however long the save and the requeue take on a busy machine); then it is cancelled."""
    deadline = time.time() + timeout_s
    while sum(e["event"] == "start" for e in read_events(task / "events.jsonl")) < 2:
        assert time.time() < deadline, f"the preempted job never started again\n{last_log(task.parents[1])}"
        time.sleep(0.5)
    subprocess.run(["scancel", job], capture_output=True)


def logged_lines(task: Path) -> list[str]:
    return (task / ".work" / "metrics.jsonl").read_text().splitlines()


def node_addr(node: str) -> str:
    out = subprocess.run(["scontrol", "-o", "show", "node", node], capture_output=True, text=True).stdout
    return next(w.split("=", 1)[1] for w in out.split() if w.startswith("NodeAddr="))


# -------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def multinode(slurm_multinode_cluster: str) -> Iterator[str]:
    """SLURM clients (sbatch, sacct, scontrol; submitit; mcmdpo status) talk to the multi-node
    cluster during this module; the single-node cluster's SLURM_CONF comes back afterwards."""
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = slurm_multinode_cluster
    yield slurm_multinode_cluster
    if saved is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = saved


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Path:
    """data -> model -> precompute, in-process (debug executor)."""
    root = tmp_path_factory.mktemp("multinode-upstream")
    run(write(root, "upstream", DEBUG))
    return root


@pytest.fixture(scope="module")
def runs(multinode, upstream, nltk_data, tmp_path_factory) -> dict[str, Any]:  # noqa: F811
    """The two-node chain on SLURM (its sft preempted and resumed on another node pair) and the
    one-node two-task chain on the local executor, side by side."""
    two = clone(upstream, tmp_path_factory.mktemp("two-nodes"))
    one = clone(upstream, tmp_path_factory.mktemp("one-node"))
    started = time.time()
    with paused(PAUSE_MS):  # the sft job alone, so that only its first attempt is slowed down
        submit(load_recipe(write(two, "sft", SFT_Z3, SLURM, two_nodes("sft"))))
    nodes2 = two_nodes("sft") + two_nodes("preference")
    chain = write(two, "chain", SFT_Z3, PREF_Z2, EVAL.format(nltk=nltk_data), SLURM, nodes2)
    report = submit(load_recipe(chain))  # the sft job is still queued: the rest waits for it (afterok)
    submitted = {s.stage: s.submitted for s in report.stages}
    assert [submitted[s] for s in ("sft", "preference", "eval")] == [0, 1, 2], report.stages
    local = write(one, "local", SFT_Z3, PREF_Z2, ranks("sft", 2), ranks("preference", 2))
    with ThreadPoolExecutor(1) as pool:
        baseline = pool.submit(run, local)
        preemption = preempt_rank0_node(task_dir(chain, "sft"))
        release_when_resumed(task_dir(chain, "sft"), preemption["job"])
        status = wait_settled(load_recipe(chain).run_dir, 480)
        baseline.result()
    return {
        "chain": chain,
        "local": local,
        "status": {s["stage"]: s for s in status["stages"]},
        "preemption": preemption,
        "wall_s": time.time() - started,
    }


# ----------------------------------------------------------------------------------------------- tests


def test_preempted_two_node_sft_resumes_on_another_node_pair_bit_identical(runs):
    chain = runs["chain"]
    sft, status = task_dir(chain, "sft"), runs["status"]["sft"]
    assert status["done"] == 1, f"{status}\n{last_log(load_recipe(chain).run_dir)}"
    events = [e["event"] for e in read_events(sft / "events.jsonl")]
    assert events == ["start", "interrupted", "start", "done"], events  # rank 0 alone writes events
    (row,) = status["task_status"]
    first, second = row["node_history"]
    assert len(first) == len(second) == 2 and runs["preemption"]["node"] == first[0]
    assert first[0] not in second, row["node_history"]  # resumed without the preempted node
    assert read_json(sft / "DONE")["nodes"] == second
    assert read_json(sft / "train.json")["resumes"] == 1
    (folder,) = (sft / ".work" / "checkpoints").glob("step-*")  # the stop-save, written by both ranks
    assert 2 <= int(folder.name[5:]) < STEPS
    listed = set(read_json(folder / "COMPLETE")["files"])
    for rank in (0, 1):
        assert {f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", f"rng-rank-{rank:05d}.pt"} <= listed
    one_node = task_dir(runs["local"], "sft")
    assert_trained(one_node, world=2)
    assert_bit_identical(sft, one_node, "(two-node sft, preempted and resumed, vs one node x two tasks)")
    assert losses(sft) == losses(one_node)


def test_two_node_preference_zero2_rendezvous_and_bit_identical_weights(runs):
    chain = runs["chain"]
    pref, status = task_dir(chain, "preference"), runs["status"]["preference"]
    assert status["done"] == 1, f"{status}\n{last_log(load_recipe(chain).run_dir)}"
    (start,) = [e for e in read_events(pref / "events.jsonl") if e["event"] == "start"]
    nodes = start["nodes"]
    assert len(nodes) == 2 and start["host"] == nodes[0] and start["world_size"] == 2
    port = start["rendezvous"].split(" ")[0].split(":")[1]
    # MASTER_ADDR: the first node, resolved to its own namespace's address, also on the other node
    expected = f"rendezvous at {nodes[0]}:{port} ({node_addr(nodes[0])}, 2 node(s))"
    assert start["rendezvous"] == expected.split(" at ")[1]
    rank1_log = Path(start["log"].replace("_0_log.err", "_1_log.err")).read_text()
    assert f"rank 1 on {nodes[1]}: {expected}" in rank1_log
    assert len(logged_lines(pref)) == STEPS  # metrics from rank 0 only
    one_node = task_dir(runs["local"], "preference")
    assert_trained(one_node, world=2)
    assert_bit_identical(pref, one_node, "(two-node MCM-DPO ZeRO-2 vs one node x two tasks)")
    assert losses(pref) == losses(one_node)


def test_eval_array_spreads_over_nodes_and_status_names_them(runs):
    run_dir = load_recipe(runs["chain"]).run_dir
    status = runs["status"]
    assert [status[s]["done"] for s in ("eval", "score", "report")] == [2, 1, 1], status
    hosts = [t["nodes"] for t in status["eval"]["task_status"]]
    assert len({h[0] for h in hosts}) == 2, hosts  # the two shards ran at once, on two nodes
    sft_row = status["sft"]["task_status"][0]
    cli = subprocess.run(
        [sys.executable, "-m", "mcmdpo", "status", str(run_dir), "--tasks"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert cli.returncode == 0, cli.stderr
    assert "nodes" in cli.stdout and "node[" in cli.stdout, cli.stdout
    assert " > ".join(",".join(n) for n in sft_row["node_history"]) in cli.stdout, cli.stdout
    for task in status["eval"]["task_status"]:
        assert ",".join(task["nodes"]) in cli.stdout
    print(f"two-node chain + one-node baseline: {runs['wall_s']:.0f} s")
