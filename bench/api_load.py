"""Load test of the read API on loopback with wrk, beside the same reads answered by DuckDB per request.

    .venv/bin/python bench/api_load.py --warehouse data/ci-warehouse.duckdb [--seconds 10]

Both servers are uvicorn processes on 127.0.0.1 serving `GET /users/{user}/recommendations?k=10`
for users drawn at random (wrk's Lua) from the newest night published beside the warehouse:
- `api`: unirec_dagster.api, the night held in memory (what `make serve` runs);
- `duckdb per request`: the same answer from a DuckDB query on the published Parquet file for
  every request (one connection, a parameterised query), the way a site would read the file itself.
wrk runs one thread at 1, 16 and 64 connections for `--seconds` each; throughput, p50 and p99
latency as wrk reports them, and the count of non-2xx answers and socket errors. Two more rows load
the API at 16 connections: while clients post 100 purchases a second to /events, and while a newer
night is published every 2 seconds (the API looks every second and swaps it in). The API serves a
scratch copy of the night, so the bench writes nothing beside the measured warehouse.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import duckdb
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from unirec_dagster.serving.recommend import published_dir  # noqa: E402

DUCKDB_APP = '''
import os
import duckdb
from fastapi import FastAPI, Query

PATH = os.environ["BENCH_PARQUET"]
conn = duckdb.connect()
app = FastAPI()


@app.get("/users/{user}/recommendations")
def recommendations(user: str, k: int = Query(10, ge=1, le=100)):
    cursor = conn.cursor()  # one per request: a DuckDB connection is not shared across threads
    found = cursor.execute("SELECT item_id, title, rank, score, reason, model_version FROM read_parquet($p) "
                           "WHERE user_id = $u ORDER BY rank LIMIT $k", {"p": PATH, "u": user, "k": k}).fetchall()
    return {"user": user, "items": [{"item": i, "title": t, "rank": r, "score": s, "reason": why}
                                    for i, t, r, s, why, _ in found]}
'''

LUA = '''
users = {%s}
math.randomseed(7)
request = function()
  return wrk.format("GET", "/users/" .. users[math.random(#users)] .. "/recommendations?k=10")
end
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(port: int, path: str) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    sys.exit(f"the server on port {port} did not answer {path}")


def wrk(port: int, script: Path, connections: int, seconds: int) -> dict:
    done = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
                           f"http://127.0.0.1:{port}"], capture_output=True, text=True, check=True)
    out = done.stdout

    def latency(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\b", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": latency("50%"),
            "p99": latency("99%"), "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": sum(map(int, sockets.groups())) if sockets else 0}


def post_events(port: int, users: list[str], items: list[str], per_second: int, stop: threading.Event,
                statuses: list[int], seconds: list[float]) -> None:
    """Post one purchase every 1/per_second seconds until stopped; the status of each answer in
    `statuses`, how long it took in `seconds`."""
    chosen, period = random.Random(7), 1.0 / per_second
    next_at = time.perf_counter()
    while not stop.is_set():
        body = json.dumps([{"user": chosen.choice(users), "item": chosen.choice(items)}]).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/events", data=body,
                                         headers={"Content-Type": "application/json"})
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=5) as answer:
            statuses.append(answer.status)
        seconds.append(time.perf_counter() - started)
        next_at += period
        time.sleep(max(0.0, next_at - time.perf_counter()))


def publish_newer_nights(folder: Path, night: Path, every: float, stop: threading.Event, published: list[str]) -> None:
    """Publish copies of `night` under the following dates, one every `every` seconds, as the nightly
    run does (a temporary name, then a rename)."""
    day = dt.date.fromisoformat(night.stem)
    while not stop.wait(every):
        day += dt.timedelta(days=1)
        staging = folder / f".{day}.tmp"
        shutil.copyfile(night, staging)
        os.replace(staging, folder / f"{day}.parquet")
        published.append(day.isoformat())


def served_file(port: int) -> str:
    """The published file the API serves now (the copies keep the night's own date inside)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
        return json.loads(answer.read())["source"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warehouse", required=True, help="the warehouse whose published nights are served")
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    folder = published_dir(Path(args.warehouse))
    nights = sorted(folder.glob("????-??-??.parquet"))
    if not nights:
        sys.exit(f"no published night in {folder}: materialize recommendations first")
    night = nights[-1]
    users = [u for (u,) in duckdb.sql(f"SELECT DISTINCT user_id FROM read_parquet('{night}')").fetchall()]
    items = [i for (i,) in duckdb.sql(f"SELECT DISTINCT item_id FROM read_parquet('{night}')").fetchall()]
    print(f"night {night.name}: {len(users):,} users; wrk 1 thread, {args.seconds} s per row; "
          f"{os.cpu_count()} cores shared by server and wrk\n")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "users.lua"
        script.write_text(LUA % ", ".join(f'"{u}"' for u in users))
        (Path(tmp) / "duckdb_app.py").write_text(DUCKDB_APP)
        scratch = Path(tmp) / "scratch.duckdb"  # never created: only its published folders are
        for table in ("recommendations", "co_purchase"):
            source = published_dir(Path(args.warehouse), table) / night.name
            if source.exists():
                published_dir(scratch, table).mkdir(parents=True)
                shutil.copyfile(source, published_dir(scratch, table) / night.name)
        servers = {
            "api (night in memory)": ([sys.executable, "-m", "unirec_dagster.api"], "/health"),
            "duckdb per request": ([sys.executable, "-m", "uvicorn", "duckdb_app:app", "--log-level", "warning"], None),
        }
        print("| server | connections | requests/s | p50 ms | p99 ms | non-2xx | socket errors |\n|---|---|---|---|---|---|---|")
        for name, (command, health) in servers.items():
            port = free_port()
            env = {**os.environ, "UNIREC_DUCKDB_PATH": str(scratch), "UNIREC_API_PORT": str(port),
                   "UNIREC_API_REFRESH_SECONDS": "1", "BENCH_PARQUET": str(night), "PYTHONPATH": f"{tmp}:{ROOT}"}
            if "uvicorn" in command:
                command = [*command, "--port", str(port)]
            server = subprocess.Popen(command, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_until_up(port, health or f"/users/{users[0]}/recommendations")
                for connections in (1, 16, 64):
                    r = wrk(port, script, connections, args.seconds)
                    print(f"| {name} | {connections} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                          f"{r['non_2xx']} | {r['socket_errors']} |", flush=True)
                if health:  # the API: reads while purchases are posted
                    stop, posted, took = threading.Event(), [], []
                    posters = [threading.Thread(target=post_events, args=(port, users, items, 25, stop, posted, took))
                               for _ in range(4)]  # 4 x 25/s: one client alone waits on each answer
                    for poster in posters:
                        poster.start()
                    r = wrk(port, script, 16, args.seconds)
                    stop.set()
                    for poster in posters:
                        poster.join()
                    post_ms = np.percentile(np.array(took) * 1000, [50, 99]) if took else [float("nan")] * 2
                    print(f"| {name}, {len(posted) / args.seconds:.0f} events/s posted meanwhile "
                          f"({sum(s != 202 for s in posted)} refused; POST itself p50 {post_ms[0]:.2f} ms, "
                          f"p99 {post_ms[1]:.2f} ms) | 16 | {r['rps']:,.0f} | {r['p50']:.2f} | "
                          f"{r['p99']:.2f} | {r['non_2xx']} | {r['socket_errors']} |", flush=True)
                    stop, nights = threading.Event(), []
                    publisher = threading.Thread(target=publish_newer_nights,
                                                 args=(published_dir(scratch), night, 2.0, stop, nights))
                    publisher.start()
                    r = wrk(port, script, 16, args.seconds)
                    stop.set()
                    publisher.join()
                    time.sleep(1.5)  # one more look at the folder
                    print(f"| {name}, a newer night published every 2 s ({len(nights)} published, serving "
                          f"{served_file(port)} after) | 16 | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                          f"{r['non_2xx']} | {r['socket_errors']} |", flush=True)
            finally:
                server.terminate()
                server.wait()


if __name__ == "__main__":
    main()
