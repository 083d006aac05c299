from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
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
