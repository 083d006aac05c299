"""Fixtures every test folder shares. Helpers that are not fixtures (constants, builders, local
servers, plugin stages) live in tests/helpers/; no test module imports another test module.

Markers (pyproject.toml): ``slurm`` needs the dev cluster, ``slow`` takes more than ~20 s, ``gpu``
needs CUDA and is skipped here when no CUDA device is visible."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.paths import REPO
from tests.helpers.slurm import slurm_conf


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use the cluster must carry ``slurm`` (so that ``-m "not slurm"`` leaves them out);
    ``gpu`` tests skip (not fail) where no CUDA device is visible."""
    unmarked = [
        item.nodeid
        for item in items
        if "slurm_cluster" in getattr(item, "fixturenames", ()) and item.get_closest_marker("slurm") is None
    ]
    if unmarked:
        raise pytest.UsageError("tests using slurm_cluster without the slurm marker: " + ", ".join(unmarked))
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu:
        import torch

        if not torch.cuda.is_available():
            for item in gpu:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (marker gpu)"))


SHARED_WORKER = {
    "tests/batch/test_slurm_multinode.py": "the multi-node cluster",
    "tests/batch/test_slurm.py": "the single-node cluster",
    "tests/batch/test_stops.py": "the single-node cluster",  # scancel of queued jobs
    "tests/method/test_train_runs.py": "the single-node cluster",  # a time-limit requeue
}
"""Test modules that share a worker under `make test` (``pytest -n 2``): the tests of one SLURM
cluster watch its queue and preempt its jobs, so they never run at the same time."""


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: unknown (and unused) under -p no:xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`make test` runs two workers (pytest-xdist). A test module goes to one worker (its module-scoped
    fixtures are built once), and the modules of one SLURM cluster to the same one (``SHARED_WORKER``)."""
    from xdist.scheduler import LoadScopeScheduling

    class ClusterScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return SHARED_WORKER.get(module, module)

    return ClusterScheduling(config, log)


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs start in the submitting directory; plugin modules (tests.helpers.fixture_stages) import
    from it."""
    monkeypatch.chdir(REPO)


@pytest.fixture
def write_recipe(tmp_path: Path):
    """write_recipe(body, name="r.toml") -> path of a recipe whose runs go under tmp_path/runs."""

    def write(body: str, name: str = "r.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(body).replace("@RUNS@", str(tmp_path / "runs")))
        return path

    return write


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
    conf = slurm_conf()
    if conf is None:
        if os.environ.get("CI") or os.environ.get("MCMDPO_REQUIRE_SLURM"):
            pytest.fail(
                "SLURM dev cluster is not running: run slurm/dev-cluster/start.sh and export SLURM_CONF"
            )
        pytest.skip("SLURM dev cluster not running (slurm/dev-cluster/start.sh; export SLURM_CONF)")
    return conf


# ---------------------------------------------------------------- evaluation inputs


@pytest.fixture(scope="session")
def nltk_data(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An NLTK data folder holding WordNet (tests.helpers.wordnet); skips when none is available."""
    from tests.helpers.wordnet import wordnet_data

    return wordnet_data(tmp_path_factory)


@pytest.fixture
def amber_dir(tmp_path: Path) -> Path:
    """AMBER's ``data`` folder, hand-made (tests.helpers.amber)."""
    from tests.helpers.amber import write_amber

    return write_amber(tmp_path / "data")


@pytest.fixture
def objhal(tmp_path: Path) -> dict[str, Path]:
    """Object HalBench files, hand-made (tests.helpers.objhal): ``coco`` folder, ``syn``, ``file``."""
    from tests.helpers.objhal import write_objhal

    return write_objhal(tmp_path)


# ---------------------------------------------------------------- method inputs


@pytest.fixture(scope="module")
def processor_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaVA-NeXT image processor folder (tests.helpers.precompute.save_processor)."""
    from tests.helpers.precompute import save_processor

    return save_processor(tmp_path_factory.mktemp("processor"))


# ---------------------------------------------------------------- training runs (opt in with usefixtures)


@pytest.fixture
def _short_result_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local launcher waits up to 15 s for the result file of a job that died; a SIGKILLed job
    never writes one."""
    import submitit.core.core

    monkeypatch.setattr(submitit.core.core.Job, "_results_timeout_s", 1)


@pytest.fixture(scope="module")
def _release_process_group():
    """In-process training (debug executor) leaves a one-process gloo group behind; later test
    modules may need to create their own."""
    yield
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip
BROWSER_HOW = (
    "tools/install_test_deps.sh (apt-get install chromium chromium-driver) and "
    "pip install -e '.[dev]' (selenium)"
)


def _browser_parts() -> tuple[str | None, str | None, str | None]:
    """(browser binary, chromedriver, what is missing)."""
    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return binary, driver, "the selenium package"
    missing = [name for name, found in (("chromium", binary), ("chromedriver", driver)) if not found]
    return binary, driver, ", ".join(missing) or None


@pytest.fixture(scope="module")
def chrome(tmp_path_factory: pytest.TempPathFactory):
    """A headless Chromium (selenium) with a fresh profile, its console log recorded. Skips when Chromium,
    chromedriver or selenium is missing, unless MCMDPO_REQUIRE_BROWSER=1 (``make test``): then it fails."""
    binary, driver_path, missing = _browser_parts()
    if missing:
        message = f"headless Chromium unavailable ({missing} missing): run {BROWSER_HOW}"
        if os.environ.get("MCMDPO_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.add_argument("--window-size=1400,1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model in a folder laid out like a finished ``model`` task (``<task>/model``)."""
    from mcmdpo.method.model import build_tiny_llava
    from tests.helpers.eval import QUESTIONS

    task = tmp_path_factory.mktemp("model_task")
    build_tiny_llava(task / "model", [*QUESTIONS, "a red bus on a sunny day"], seed=3)
    return task
