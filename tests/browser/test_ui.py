"""The operator's view in a real browser, after `make run`: Dagster's asset pages show the training
curves as pictures, the served lists' preview and the evaluation's pointer to the newest evaluated
day; MLflow's UI lists the runs with their curves.

Run by `make ui-check` (CI calls it after `make run`): it starts dagster-webserver on the instance
in DAGSTER_HOME and `mlflow ui` on the tracking store of the run, and drives Chromium with
Playwright. Screenshots land in data/ui-check/ for a person to look at. Not part of `make test`:
it needs the materialized instance that `make run` leaves behind, and fails, not skips, without it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from playwright.sync_api import Page, expect, sync_playwright

from unirec_dagster.settings import PROJECT_ROOT, mlflow_uri

SHOTS = PROJECT_ROOT / "data" / "ui-check"
BIN = Path(sys.executable).parent
STARTUP_SECONDS = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(command: list[str], ready_url: str, log: Path):
    """Start a server and wait until `ready_url` answers; its log is named when it does not."""
    handle = log.open("w")
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{command[0]} exited with {process.returncode}; see {log}")
        try:
            urllib.request.urlopen(ready_url, timeout=2)
            return process
        except OSError:
            time.sleep(1)
    process.terminate()
    pytest.fail(f"{command[0]} did not answer {ready_url} within {STARTUP_SECONDS} s; see {log}")


@pytest.fixture(scope="module")
def dagster_url():
    home = os.environ.get("DAGSTER_HOME")
    assert home and (Path(home) / "storage").is_dir(), \
        f"no Dagster instance with runs at DAGSTER_HOME={home!r}: run `make run` first (make ui-check does)"
    SHOTS.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve([str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                    f"{url}/server_info", SHOTS / "dagster-webserver.log")
    yield url
    server.terminate()
    server.wait(30)


@pytest.fixture(scope="module")
def tracking():
    uri = mlflow_uri()
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("unirec")
    assert experiment is not None, f"no experiment 'unirec' in {uri}: run `make run` first"
    if uri.startswith("http"):
        yield uri, client, experiment.experiment_id
        return
    SHOTS.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve([str(BIN / "mlflow"), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)],
                    f"{url}/health", SHOTS / "mlflow-ui.log")
    yield url, client, experiment.experiment_id
    server.terminate()
    server.wait(30)


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium (UNIREC_CHROMIUM names another); Playwright's own build when installed."""
    executable = os.environ.get("UNIREC_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    yield context.new_page()
    context.close()


def _asset_page(page: Page, base: str, asset: str, key: str) -> None:
    """The asset's overview, once its latest materialization's metadata shows `key`."""
    page.goto(f"{base}/assets/{asset}", wait_until="networkidle")
    skip = page.get_by_role("button", name="Skip")  # the community sign-up dialog of a new instance
    if skip.count():
        skip.click()
    expect(page.locator("tr", has_text=key).first).to_be_visible(timeout=60_000)


def _open_markdown(page: Page, key: str):
    """A long markdown entry is a '[Show Markdown]' link that opens a dialog; a short one is inline."""
    row = page.locator("tr", has_text=key).first
    link = row.get_by_text("[Show Markdown]")
    if link.count():
        link.click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_be_visible()
        page.wait_for_timeout(500)  # the dialog fades in
        return dialog
    return row


@pytest.mark.parametrize("asset", ["pretrained_encoder", "finetuned_recommender"])
def test_training_pages_show_the_curves_as_a_picture(page, dagster_url, asset):
    _asset_page(page, dagster_url, asset, "curves_image")
    shown = _open_markdown(page, "curves_image")
    picture = shown.locator("img").first
    expect(picture).to_be_visible()
    width, height = picture.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert width > 200 and height > 100, f"the curves image did not decode ({width}x{height})"
    page.screenshot(path=str(SHOTS / f"{asset}-curves.png"))


def test_recommendations_page_shows_the_served_lists(page, dagster_url):
    _asset_page(page, dagster_url, "recommendations", "preview")
    shown = _open_markdown(page, "preview")
    table = shown.locator("table").first
    expect(table).to_be_visible()
    header = table.locator("th").all_inner_texts()
    assert [h.strip() for h in header] == ["user", "rank", "item", "title", "reason"], header
    cells = table.locator("tbody tr").all()
    assert len(cells) >= 3, "the preview shows fewer than three rows"
    assert all(row.locator("td").nth(4).inner_text().strip() for row in cells), "a preview row without a reason"
    page.screenshot(path=str(SHOTS / "recommendations-preview.png"))


def test_evaluation_page_points_to_the_newest_evaluated_day(page, dagster_url):
    _asset_page(page, dagster_url, "model_evaluation", "test_window")
    row = page.locator("tr", has_text="test_window").first
    expect(row).to_contain_text("newest partition with them is")
    row.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "model-evaluation.png"))


def test_mlflow_lists_the_runs_with_their_curves(page, tracking):
    url, client, experiment_id = tracking
    runs = client.search_runs([experiment_id])
    page.goto(f"{url}/#/experiments/{experiment_id}/runs", wait_until="load")
    for run in runs:
        expect(page.get_by_text(run.info.run_name, exact=True).first).to_be_visible(timeout=60_000)
    page.screenshot(path=str(SHOTS / "mlflow-runs.png"))
    tuned = next(r for r in runs if r.info.run_name.startswith("fine-tuning"))
    page.goto(f"{url}/#/experiments/{experiment_id}/runs/{tuned.info.run_id}/model-metrics", wait_until="load")
    page.get_by_placeholder("Search metric charts").fill("validation")
    epochs = len(client.get_metric_history(tuned.info.run_id, "validation"))
    assert epochs > 1
    # The per-epoch curve (single values are bars). The search filters the charts a moment after
    # typing, and until then the first line may be another metric's (drawn without markers when
    # long), so wait for the count rather than read it once.
    line = page.locator(".js-plotly-plot g.trace.scatter").first
    points = line.locator(".points path")
    expect(points, "the validation curve does not show every epoch").to_have_count(epochs, timeout=60_000)
    page.screenshot(path=str(SHOTS / "mlflow-validation-curve.png"))
