"""The report and an annotation page in a real browser (headless Chromium through selenium, file:// URLs).

The report: no console errors, every picture loads from inside the copied folder, the cases view sorts
by a model's score and by the difference of two models, filters, opens the raw records, and a
prediction holding ``<script>`` / ``<img onerror>`` shows as text. The human evaluation: an annotator
types 10 judgements with the keyboard, reloads half-way, exports; ``collect`` gives what was typed.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from mcmdpo.report.annotation import prepare_study
from mcmdpo.report.humaneval_results import collect_study
from mcmdpo.report.outputs import write_report
from mcmdpo.report.spec import ReportSpec
from tests.helpers.cases import XSS, make_case_run

pytestmark = pytest.mark.browser
N = 12


def console_errors(driver: Any) -> list[str]:
    """The browser console's errors since the last call (the log is drained by reading it)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def wait_for(condition: Any, timeout: float = 10.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the page")


def shown_ids(driver: Any) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#cases-table tbody tr[data-id]')].map(r => r.dataset.id)"
    )


def select(driver: Any, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, element_id)).select_by_value(value)


def scores(run: Path, task: str, model: str) -> list[float]:
    path = run / "score" / task / "metrics" / model / "palt.samples.jsonl"
    return [json.loads(line)["paper"]["rouge_l"] for line in path.read_text().splitlines()]


def ranked(values: list[float], descending: bool = True) -> list[str]:
    order = sorted(range(len(values)), key=lambda i: (-values[i] if descending else values[i], i))
    return [str(i) for i in order]


@pytest.fixture(scope="module")
def report_page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A report written, then copied elsewhere and the original deleted: (run dir, copied index.html)."""
    root = tmp_path_factory.mktemp("html")
    run = make_case_run(root / "runs", n=N, special={(2, 3): XSS, (1, 5): "a unicorn-zebra on a bike"})
    write_report([run], root / "made", ReportSpec(resamples=100))
    shutil.copytree(root / "made", root / "elsewhere" / "report")
    shutil.rmtree(root / "made")
    return run, root / "elsewhere" / "report" / "index.html"


def test_report_loads_cleanly_with_tables_figures_and_pictures(chrome, report_page):
    _, index = report_page
    chrome.set_window_size(1400, 7000)  # every lazy picture in view, so that each one loads
    chrome.get(index.as_uri())
    folder = index.parent.as_uri() + "/"
    script = "return [...document.images].map(i => [i.src, i.complete && i.naturalWidth > 0])"

    def loaded() -> list[list[Any]] | None:
        found = chrome.execute_script(script)
        return found if found and all(ok for _, ok in found) else None

    images = wait_for(loaded)
    assert len(images) == 2 + N and all(src.startswith(folder) for src, _ in images)
    assert chrome.execute_script("return document.querySelectorAll('table.results tbody tr').length") == 3
    assert chrome.execute_script("return document.querySelector('#cases-count').textContent") == (
        f"showing {N} of {N} items"
    )
    assert console_errors(chrome) == []
    chrome.set_window_size(1400, 1000)


def test_cases_sort_by_a_model_by_a_difference_and_filter(chrome, report_page):
    from selenium.webdriver.common.by import By

    run, index = report_page
    chrome.get(index.as_uri())
    assert shown_ids(chrome) == [str(i) for i in range(N)]
    mcm, sft = scores(run, "t002palt", "preference"), scores(run, "t000palt", "sft")
    chrome.find_element(By.CSS_SELECTOR, '#cases-table th.model[data-model="2"]').click()
    assert shown_ids(chrome) == ranked(mcm)
    chrome.find_element(By.CSS_SELECTOR, '#cases-table th.model[data-model="2"]').click()  # again: flip
    assert shown_ids(chrome) == ranked(mcm, descending=False)
    select(chrome, "cases-order", "desc")
    select(chrome, "cases-sort", "diff")
    select(chrome, "cases-a", "2")
    select(chrome, "cases-b", "0")
    assert shown_ids(chrome) == ranked([a - b for a, b in zip(mcm, sft, strict=True)])
    chrome.find_element(By.ID, "cases-filter").send_keys("UNICORN-zebra")
    wait_for(lambda: shown_ids(chrome) == ["5"])
    assert chrome.find_element(By.ID, "cases-count").text == f"showing 1 of {N} items; 1 match the filter"
    assert not chrome.find_element(By.ID, "cases-more").is_displayed()
    assert console_errors(chrome) == []


def test_markup_in_a_prediction_shows_as_text_and_the_raw_record_opens(chrome, report_page):
    from selenium.webdriver.common.by import By

    run, index = report_page
    chrome.get(index.as_uri())
    cell = '#cases-table tr[data-id="3"] td:nth-child(7) div'
    assert chrome.execute_script(f"return document.querySelector('{cell}').textContent") == XSS
    assert chrome.execute_script("return window.__xss === undefined")
    injected = "#cases img[src$='/x'], script:not([nonce]):not([type])"
    assert chrome.execute_script(f'return document.querySelectorAll("{injected}").length') == 0
    chrome.find_element(By.CSS_SELECTOR, '#cases-table tr[data-id="3"] a.item-id').click()
    records = chrome.find_element(By.CSS_SELECTOR, 'tr.records[data-records-for="3"]').text
    assert "predictions/preference/palt.jsonl" in records
    pres = "tr.records[data-records-for='3'] pre"
    shown = chrome.execute_script(f'return [...document.querySelectorAll("{pres}")].map(p => p.textContent)')
    raw = (run / "score/t002palt/predictions/preference/palt.jsonl").read_text().splitlines()[3]
    record = json.loads(shown[2])["record"]  # the third model's record, field for field and in file order
    assert record == json.loads(raw) and list(record) == list(json.loads(raw)) and record["response"] == XSS
    assert chrome.execute_script("return window.__xss === undefined")
    assert console_errors(chrome) == []


TYPED = {"a1": "1321123312", "a2": "3311122131"}  # 1 left better, 2 tie, 3 right better


def annotate(driver: Any, page: Path, keys: str, downloads: Path) -> Path:
    """Type ``keys`` on the page, reloading after the first half and checking the state survived."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    def judged() -> str:
        return driver.find_element(By.TAG_NAME, "body").get_attribute("data-judged")

    driver.get(page.as_uri())
    half = len(keys) // 2
    for key in keys[:half]:
        ActionChains(driver).send_keys(key).perform()
    wait_for(lambda: judged() == str(half))
    driver.refresh()
    assert judged() == str(half) and driver.find_element(By.ID, "position").text.startswith(
        f"question {half + 1}"
    )
    assert driver.find_element(By.ID, "progress").text == f"{half} of {len(keys)} judged"
    ActionChains(driver).send_keys(Keys.ARROW_LEFT).perform()  # back: the last answer is still marked
    picked = {"1": "left", "2": "tie", "3": "right"}[keys[half - 1]]
    assert "picked" in driver.find_element(By.ID, f"choose-{picked}").get_attribute("class")
    ActionChains(driver).send_keys(Keys.ARROW_RIGHT).perform()
    for key in keys[half:]:
        ActionChains(driver).send_keys(key).perform()
    wait_for(lambda: judged() == str(len(keys)))
    driver.find_element(By.ID, "export").click()
    annotator = page.stem.removeprefix("annotator-")
    target = downloads / f"humaneval-cases-{annotator}.json"
    wait_for(lambda: target.is_file() and not list(downloads.glob("*.crdownload")))
    assert console_errors(driver) == []
    return target


def expected_outcomes(key: dict[str, Any]) -> dict[int, dict[str, int]]:
    """win / tie / lose counts per pair from what was typed, un-blinded here with the key."""
    counts = {p: {"win": 0, "tie": 0, "lose": 0} for p in range(len(key["pairs"]))}
    for annotator, keys in TYPED.items():
        for question, typed in zip(key["annotators"][annotator], keys, strict=True):
            side = {"1": "left", "2": "tie", "3": "right"}[typed]
            a_side = "left" if question["left"] == "a" else "right"
            outcome = "tie" if side == "tie" else ("win" if side == a_side else "lose")
            counts[question["pair"]][outcome] += 1
    return counts


def test_annotate_with_the_keyboard_reload_export_and_collect(chrome, tmp_path):
    run = make_case_run(tmp_path, n=N)
    study = prepare_study(run, ["+MCM-DPO:+DPO", "+MCM-DPO:+SFT"], items=5, annotators=2, seed=0)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    chrome.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    files = [
        annotate(chrome, page, TYPED[page.stem.removeprefix("annotator-")], downloads) for page in study.pages
    ]
    exported = json.loads(files[0].read_text())
    assert exported["annotator"] == "a1" and exported["study"] == study.fingerprint and exported["complete"]
    assert len(exported["judgements"]) == 10 and "+MCM-DPO" not in files[0].read_text()
    result = collect_study(files, study.out_dir)
    expected = expected_outcomes(json.loads(study.key.read_text()))
    for index, pair in enumerate(result.summary.pairs):
        got = {o: round(share * pair.judgements) for o, share in pair.shares.items()}
        assert got == expected[index] and pair.judgements == 10 and pair.annotators == 2
