from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs start in the submitting directory; plugin modules (tests.fixture_stages) import from it."""
    monkeypatch.chdir(REPO)


@pytest.fixture
def write_recipe(tmp_path: Path):
    """write_recipe(body, name="r.toml") -> path of a recipe whose runs go under tmp_path/runs."""

    def write(body: str, name: str = "r.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(body).replace("@RUNS@", str(tmp_path / "runs")))
        return path

    return write


def _slurm_conf() -> str | None:
    conf = os.environ.get("SLURM_CONF")
    if conf and Path(conf).is_file() and shutil.which("sinfo"):
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return conf
    return None


MULTINODE_NODES = 3
"""Nodes of the multi-node test cluster: two-node jobs, plus a spare node so that a requeued job can
resume on another node pair."""


def _fail_or_skip(message: str) -> None:
    if os.environ.get("CI") or os.environ.get("MCMDPO_REQUIRE_SLURM"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def slurm_multinode_cluster() -> Iterator[str]:
    """The multi-node dev cluster (``slurm/dev-cluster/start.sh --nodes 3``: node1-node3, one CPU each,
    each in its own network namespace; its own ports, database and state dir, so it runs next to the
    single-node cluster of ``slurm_cluster``). Started here when it is not up, and stopped at the end
    of the session if this fixture started it. Yields its SLURM_CONF; it does not export it."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        _fail_or_skip("the multi-node SLURM cluster needs root and iproute2 (network namespaces)")
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_CONF", "SLURM_DIR", "SLURM_DEV_DB_PORT")}
    nodes = ["--nodes", str(MULTINODE_NODES)]
    started = subprocess.run(
        [str(REPO / "slurm/dev-cluster/start.sh"), *nodes], env=env, capture_output=True, text=True
    )
    if started.returncode != 0:
        _fail_or_skip(f"the multi-node SLURM cluster did not start:\n{started.stderr[-3000:]}")
    yield started.stdout.strip().splitlines()[-1].split("=", 1)[1]
    if "already up" not in started.stderr:
        subprocess.run([str(REPO / "slurm/dev-cluster/stop.sh"), *nodes], env=env, capture_output=True)


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The running dev cluster (slurm/dev-cluster/start.sh). In CI (CI=true) its absence is a failure."""
    conf = _slurm_conf()
    if conf is None:
        if os.environ.get("CI") or os.environ.get("MCMDPO_REQUIRE_SLURM"):
            pytest.fail(
                "SLURM dev cluster is not running: run slurm/dev-cluster/start.sh and export SLURM_CONF"
            )
        pytest.skip("SLURM dev cluster not running (slurm/dev-cluster/start.sh; export SLURM_CONF)")
    return conf
