"""Multi-node plumbing without a cluster: rendezvous checks, gloo's address, where tasks ran, the
sbatch file of a multi-node job, env tables in profiles."""

from __future__ import annotations

import shutil
import socket

import pytest

from mcmdpo.batch.artifacts import read_events
from mcmdpo.batch.display import compact_hosts, status_table, tasks_table
from mcmdpo.batch.launch import submit
from mcmdpo.batch.plan import build_plan
from mcmdpo.batch.recipe import load_recipe
from mcmdpo.batch.rendezvous import RendezvousError, check_reachable
from mcmdpo.batch.status import run_status
from mcmdpo.method.train.engine import check_gloo_address, spans_nodes
from tests.helpers.recipes import BASE


def test_master_addr_must_resolve_and_not_to_loopback_on_the_other_nodes():
    check_reachable("vm", "127.0.0.1", multi_node=False, on_master_node=False, here="vm")  # one node
    check_reachable("node1", "127.0.1.1", multi_node=True, on_master_node=True, here="node1")
    check_reachable("node1", "10.213.0.2", multi_node=True, on_master_node=False, here="node2")
    with pytest.raises(
        RendezvousError, match=r"MASTER_ADDR=node1 resolves to 127.0.1.1 \(loopback\) on node2"
    ):
        check_reachable("node1", "127.0.1.1", multi_node=True, on_master_node=False, here="node2")
    with pytest.raises(RendezvousError, match=r"MASTER_ADDR=node1 .* does not resolve on node2"):
        check_reachable("node1", None, multi_node=True, on_master_node=False, here="node2")


def test_gloo_across_nodes_needs_a_reachable_host_address(monkeypatch):
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.setattr(socket, "gethostname", lambda: "node2")
    monkeypatch.setattr(socket, "gethostbyname", lambda host: "127.0.1.1")
    with pytest.raises(RendezvousError, match=r"node2 resolves to 127.0.1.1: .*GLOO_SOCKET_IFNAME"):
        check_gloo_address()
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth0")
    check_gloo_address()
    monkeypatch.delenv("GLOO_SOCKET_IFNAME")
    monkeypatch.setattr(socket, "gethostbyname", lambda host: "10.213.0.3")
    check_gloo_address()


def test_spans_nodes(monkeypatch):
    for world, local, expected in (("2", "1", True), ("4", "2", True), ("2", "2", False), ("1", "1", False)):
        monkeypatch.setenv("WORLD_SIZE", world)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
        assert spans_nodes() is expected


def test_compact_hosts_like_slurm_host_lists():
    assert compact_hosts(["node2", "node1", "node3", "node1"]) == "node[1-3]"
    assert compact_hosts(["node1", "node3"]) == "node[1,3]"
    assert compact_hosts(["gpu007", "gpu008", "gpu010", "login"]) == "gpu[007-008,010],login"
    assert compact_hosts(["vm"]) == "vm" and compact_hosts([]) == "-"
    assert compact_hosts([f"n{i}" for i in range(0, 40, 2)]).endswith("…")


def test_status_names_the_nodes_of_every_attempt(write_recipe):
    recipe = load_recipe(write_recipe(BASE + '[cluster]\nexecutor = "debug"\n'))  # in-process: quick
    assert submit(recipe).ok
    status = run_status(recipe.run_dir)
    here = socket.gethostname()
    for stage in status["stages"]:
        assert stage["nodes"] == [here]
        assert all(t["node_history"] == [[here]] and t["nodes"] == [here] for t in stage["task_status"])
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(status_table(status))  # local runs: no nodes column
    console.print(tasks_table(status))
    text = console.export_text()
    assert "nodes (each attempt)" in text and text.count(f" {here} ") >= 5
    assert "┃ requeue ┃ notes ┃" in text and "(debug)" in text


def test_env_tables_merge_variable_by_variable(write_recipe, tmp_path, monkeypatch):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "site.toml").write_text(
        '[defaults]\n[defaults.env]\nNCCL_SOCKET_IFNAME = "ib0"\nNCCL_DEBUG = "WARN"\n'
        '[stages.sum.env]\nNCCL_IB_HCA = "mlx5_0,mlx5_1"\n'
    )
    monkeypatch.setenv("MCMDPO_PROFILES", str(profiles))
    body = BASE + '[cluster]\nprofile = "site"\n[cluster.resources.sum.env]\nNCCL_DEBUG = "INFO"\n'
    plan = build_plan(load_recipe(write_recipe(body)))
    assert plan.stage("count").resources["env"] == {"NCCL_SOCKET_IFNAME": "ib0", "NCCL_DEBUG": "WARN"}
    assert plan.stage("sum").resources["env"] == {
        "NCCL_SOCKET_IFNAME": "ib0",
        "NCCL_DEBUG": "INFO",
        "NCCL_IB_HCA": "mlx5_0,mlx5_1",
    }
    assert build_plan(load_recipe(write_recipe(BASE, "plain.toml"))).stage("sum").resources["env"] is None


@pytest.mark.skipif(shutil.which("srun") is None, reason="submitit's SLURM executor needs srun")
def test_sbatch_of_multi_node_jobs(write_recipe):
    """srun --kill-on-bad-exit=1 for jobs on several nodes, so that one failing rank ends the job
    instead of its peers waiting in a collective; ``env`` exported before srun. One-node sbatch
    files are unchanged."""
    from mcmdpo.batch.launch import _SlurmLauncher

    resources = (
        '[cluster.resources.sum]\nnodes = 2\n[cluster.resources.sum.env]\nNCCL_SOCKET_IFNAME = "^lo,docker"\n'
    )
    recipe = load_recipe(
        write_recipe(BASE + '[cluster]\nexecutor = "slurm"\nprofile = "local"\n' + resources)
    )
    plan = build_plan(recipe)
    launcher = _SlurmLauncher(plan, recipe, {"jobs": {}, "stages": {}}, None)
    text = {
        s.name: launcher.executor(s)._executor._make_submission_file_text("cmd", "uid") for s in plan.stages
    }
    assert "--nodes=2" in text["sum"] and "--kill-on-bad-exit=1" in text["sum"]
    assert "export NCCL_SOCKET_IFNAME='^lo,docker'\n" in text["sum"]
    assert "--kill-on-bad-exit" not in text["count"] and "NCCL" not in text["count"]


def test_sample_multinode_profile(write_recipe):
    plan = build_plan(load_recipe(write_recipe(BASE + '[cluster]\nprofile = "multinode-h100"\n')))
    count = plan.stage("count").resources  # a cpu stage: one node, the site's network settings
    assert (count["nodes"], count["gpus_per_node"]) == (1, 0)
    assert count["env"] == {"NCCL_SOCKET_IFNAME": "^lo,docker", "NCCL_IB_HCA": "mlx5", "NCCL_DEBUG": "WARN"}
    from mcmdpo.batch.recipe.profiles import find_profile, load_profile, resolve_resources

    profile = load_profile(find_profile("multinode-h100"))
    train = resolve_resources(profile, {}, "sft", "gpu")
    assert (train.nodes, train.tasks_per_node, train.gpus_per_node) == (2, 8, 8)
    assert resolve_resources(profile, {}, "eval", "gpu").nodes == 1


def test_status_shows_the_first_rank_to_fail(write_recipe):
    """Rank 0 records its failure in events.jsonl, another rank in its own file; status names the
    earliest of the latest attempt (on several nodes, a peer's failure kills rank 0 with a symptom)."""
    from mcmdpo.batch.artifacts import append_event, write_json_atomic
    from mcmdpo.batch.paths import RunPaths

    recipe = load_recipe(write_recipe(BASE + '[cluster]\nexecutor = "debug"\n'))
    task = submit(recipe).plan.stage("count").tasks[1]
    paths = RunPaths(recipe.run_dir)
    paths.done("count", task.task_id).unlink()  # as if its latest attempt had failed on rank 0
    append_event(paths.events("count", task.task_id), "start", rank=0, host="node1", nodes=["node1", "node2"])
    started = read_events(paths.events("count", task.task_id))[-1]["time"]
    failed_at = {"time": started + 10}
    append_event(
        paths.events("count", task.task_id), "failed", rank=0, error="gloo: Connection closed", **failed_at
    )

    def failed() -> dict:
        (row,) = [t for t in run_status(recipe.run_dir)["stages"][0]["task_status"] if t["state"] == "failed"]
        return row

    assert failed()["error"] == "gloo: Connection closed"
    peer = {"rank": 1, "host": "node2", "error": "RendezvousError: no", "log": "/x/9_1_log.err"}
    write_json_atomic(paths.rank_failure("count", task.task_id, 1), {**peer, "time": started + 5})
    write_json_atomic(paths.rank_failure("count", task.task_id, 2), {**peer, "rank": 2, "time": 1.0})  # stale
    assert (failed()["error"], failed()["log"]) == ("rank 1 on node2: RendezvousError: no", "/x/9_1_log.err")
