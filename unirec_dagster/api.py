"""The read API: the newest published night's recommendations over HTTP, for a website to call per
page view (FastAPI, served by uvicorn).

    make serve        # = python -m unirec_dagster.api: 127.0.0.1, port UNIREC_API_PORT (default 8000)

    GET /users/{user}/recommendations?k=10   the user's list: items, titles, scores, reasons, the
                                             model version and the night; an unknown user gets the
                                             night's most recommended items, flagged `fallback`
    GET /health                              the night served, its age, the last refresh's problem

It reads the Parquet snapshot that `recommendations` publishes beside the warehouse
(`<warehouse>.serving/recommendations/<night>.parquet`, written whole and renamed), never the
warehouse file, so nightly runs and the API never wait on each other. The newest night is held in
memory; every UNIREC_API_REFRESH_SECONDS (default 30) the folder is looked at again, a newer night is
read and checked completely before it replaces the current one in a single assignment (no request
sees half a night), and a publication that cannot be read or is empty is reported on /health while
the last good night stays served. Bad input (an id over 128 characters, k outside 1..100, an unknown
path) is a 4xx with a message.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import uvicorn
from fastapi import FastAPI, Query
from fastapi import Path as PathParameter
from fastapi.responses import JSONResponse, Response

from unirec_dagster import settings
from unirec_dagster.serving.recommend import published_dir

MAX_ID_LENGTH = 128
MAX_K = 100
FALLBACK_ITEMS = MAX_K
REQUIRED_COLUMNS = {"partition_date", "user_id", "item_id", "rank", "score", "reason", "model_version", "title"}


class BrokenPublication(ValueError):
    """A published night that cannot be served: unreadable, missing columns, or empty."""


@dataclass(frozen=True)
class Night:
    """One published night, ready to answer: every user's list in rank order, each item already
    encoded as JSON (a request only joins the first k: no encoding per request)."""

    night: dt.date
    source: Path
    model_version: str
    lists: dict[str, list[str]]
    most_recommended: list[str]   # for users the night does not know
    loaded_at: float = field(default_factory=time.time)

    def answer(self, user: str, k: int) -> bytes:
        items, fallback = (self.lists[user], False) if user in self.lists else (self.most_recommended, True)
        head = json.dumps({"user": user, "night": self.night.isoformat(), "model_version": self.model_version,
                           "fallback": fallback})
        return f'{head[:-1]}, "items": [{", ".join(items[:k])}]}}'.encode()


def read_night(path: Path) -> Night:
    """Read and check a published night completely; BrokenPublication says what is wrong."""
    try:
        with duckdb.connect() as conn:
            relation = conn.read_parquet(str(path))
            missing = REQUIRED_COLUMNS - set(relation.columns)
            if missing:
                raise BrokenPublication(f"{path.name}: columns {sorted(missing)} missing")
            found = relation.project("partition_date, user_id, item_id, rank, score, reason, model_version, title") \
                .order("user_id, rank").fetchall()
    except duckdb.Error as exc:
        raise BrokenPublication(f"{path.name}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    if not found:
        raise BrokenPublication(f"{path.name}: no rows")
    lists: dict[str, list[str]] = {}
    counts: dict[str, float] = {}
    titles: dict[str, str | None] = {}
    for _, user, item, rank, score, reason, _, title in found:
        lists.setdefault(str(user), []).append(json.dumps(
            {"item": str(item), "title": title, "rank": int(rank), "score": round(float(score), 6), "reason": reason}))
        counts[str(item)] = counts.get(str(item), 0.0) + 1.0 / rank  # rank-weighted: top places count most
        titles[str(item)] = title
    popular = sorted(counts, key=lambda item: (-counts[item], item))[:FALLBACK_ITEMS]
    most_recommended = [json.dumps({"item": item, "title": titles[item], "rank": r, "score": round(counts[item], 6),
                                    "reason": "often recommended tonight"}) for r, item in enumerate(popular, 1)]
    return Night(found[0][0], path, str(found[0][6]), lists, most_recommended)


class NightStore:
    """The night being served, replaced whole when a newer good one is published."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.current: Night | None = None
        self.problem: str | None = None
        self.checked_at = 0.0

    def newest_file(self) -> Path | None:
        files = sorted(self.folder.glob("????-??-??.parquet")) if self.folder.is_dir() else []
        return files[-1] if files else None

    def refresh(self) -> None:
        self.checked_at = time.time()
        newest = self.newest_file()
        if newest is None:
            self.problem = None if self.current else f"no published night in {self.folder}"
            return
        current = self.current
        if current and current.source == newest and newest.stat().st_mtime <= current.loaded_at:
            return
        try:
            night = read_night(newest)
        except BrokenPublication as exc:
            self.problem = f"{exc}; still serving {current.night if current else 'nothing'}"
            return
        self.current, self.problem = night, None  # one assignment: a request sees the old or the new night

    def watch(self, every: float) -> threading.Thread:
        def loop():
            while True:
                time.sleep(every)
                self.refresh()
        thread = threading.Thread(target=loop, name="night-refresh", daemon=True)
        thread.start()
        return thread


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(folder: Path | None = None, refresh_seconds: float | None = None) -> FastAPI:
    store = NightStore(folder or published_dir(settings.duckdb_path()))
    store.refresh()
    app = FastAPI(title="unirec-dagster recommendations", version="1")
    app.state.nights = store
    if refresh_seconds is None:
        refresh_seconds = settings.api_refresh_seconds()
    if refresh_seconds > 0:
        store.watch(refresh_seconds)

    # async: nothing here blocks (a dictionary lookup), so no thread pool hop per request
    @app.get("/users/{user}/recommendations")
    async def recommendations(user: str = PathParameter(min_length=1, max_length=MAX_ID_LENGTH),
                              k: int = Query(10, ge=1, le=MAX_K)):
        night = store.current
        if night is None:
            return error(503, store.problem or "no night published yet")
        return Response(night.answer(user, k), media_type="application/json")

    @app.get("/health")
    async def health():
        night = store.current
        if night is None:
            return error(503, store.problem or "no night published yet")
        return {"night": night.night.isoformat(), "model_version": night.model_version, "users": len(night.lists),
                "age_hours": round((time.time() - night.source.stat().st_mtime) / 3600, 2),
                "source": night.source.name, "problem": store.problem}

    return app


def main() -> None:
    uvicorn.run(create_app(), host="127.0.0.1", port=settings.api_port(), log_level="warning")


if __name__ == "__main__":
    main()
