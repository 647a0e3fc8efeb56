"""A picture of an asset's metadata plots (the Overview tab's Metadata section, "Plots": each numeric
entry drawn over the materializations) from a Dagster instance, taken in Chromium: after a replay,
`model_evaluation`'s served and strongest-peer Recall@20 over the evaluated nights.

    DAGSTER_HOME=/tmp/replay/home UNIREC_DATASET=/tmp/replay/home/replay/spec.yaml \\
    UNIREC_DUCKDB_PATH=/tmp/replay/w.duckdb .venv/bin/python bench/plots_screenshot.py --out docs/replay-plots.png

It starts dagster-webserver on the instance (the code location loads as the replay's did, so give
it the same settings), opens the asset's metadata plots and saves the page as a PNG.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--asset", default="model_evaluation")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--by", choices=["partitions", "events"], default="events",
                        help="x axis: the materializations in time order, or the partitions (Dagster's UI draws "
                             "those only when the newest partition is materialized, dagster-io/dagster#24600)")
    parser.add_argument("--startup-seconds", type=int, default=180)
    args = parser.parse_args()
    if not os.environ.get("DAGSTER_HOME"):
        sys.exit("set DAGSTER_HOME to the instance whose plots to draw")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(Path(sys.executable).parent / "dagster-webserver"), "-w", "workspace.yaml",
                               "-h", "127.0.0.1", "-p", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + args.startup_seconds
        while True:
            try:
                urllib.request.urlopen(f"{url}/server_info", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit(f"dagster-webserver did not answer within {args.startup_seconds} s")
                time.sleep(1)
        executable = os.environ.get("UNIREC_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable)
            page = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
            page.goto(f"{url}/assets/{args.asset}", wait_until="networkidle")
            skip = page.get_by_role("button", name="Skip")  # the community sign-up dialog of a new instance
            if skip.count():
                skip.click()
            # The Overview's metadata section draws numeric entries over partitions under "Plots".
            page.get_by_role("button", name="Plots").click()
            if args.by == "events":
                page.get_by_role("button", name="Events").click()
            page.wait_for_timeout(5_000)  # the charts draw after the data arrives
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
        print(f"wrote {args.out}")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
