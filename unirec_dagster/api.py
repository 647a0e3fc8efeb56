"""The read API: the newest published night's recommendations over HTTP, for a website to call per
page view (FastAPI, served by uvicorn).

    make serve        # = python -m unirec_dagster.api: UNIREC_API_HOST (default 127.0.0.1), port
                      #   UNIREC_API_PORT (default 8000); deploy/api.yaml runs it on Kubernetes

    GET /users/{user}/recommendations?k=10   the user's list: items, titles, scores, reasons, the
                                             model version and the night; an unknown user gets the
                                             night's most recommended items, flagged `fallback`
    GET /items/{item}/similar?k=10           the items most like it (the model's space), with titles
    POST /events                             purchases as they happen: [{"user", "item", "ts"?}, ...]
    GET /health                              the night served, its age, the last refresh's problem

It reads the Parquet snapshot that `recommendations` publishes beside the warehouse
(`<warehouse>.serving/recommendations/<night>.parquet`, written whole and renamed), never the
warehouse file, so nightly runs and the API never wait on each other. The newest night is held in
memory; every UNIREC_API_REFRESH_SECONDS (default 30) the folder is looked at again, a newer night is
read and checked completely before it replaces the current one in a single assignment (no request
sees half a night), and a publication that cannot be read or is empty is reported on /health while
the last good night stays served. Bad input (an id over 128 characters, k outside 1..100, an unknown
path, an event without user or item) is a 4xx with a message.

Fresh within minutes: a purchase posted to /events after the night's cutoff leaves the buyer's list
on the next read, and the items of the list bought with it (the night's co-purchase neighbours,
published beside the lists) move up, no retraining. Posted events are kept in a journal beside the published
nights (`<warehouse>.serving/intraday/<day>.jsonl`), so a restarted API keeps them, and dropped once
a night that covers their day is served. They are never ingested: the shop's own daily file stays
the record the nightly run reads, so nothing is counted twice.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import uvicorn
from fastapi import Body, FastAPI, Query
from fastapi import Path as PathParameter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from unirec_dagster import settings
from unirec_dagster.serving.recommend import published_dir

MAX_ID_LENGTH = 128
MAX_K = 100
MAX_EVENTS = 1000  # per POST
FALLBACK_ITEMS = MAX_K
Encoded = tuple[str, str]  # (item id, the item's JSON in a list)


class BrokenPublication(ValueError):
    """A published night that cannot be served: unreadable, missing columns, or empty."""


@dataclass(frozen=True)
class Night:
    """One published night, ready to answer: every user's list in rank order, each item already
    encoded as JSON (a request only joins the first k: no encoding per request)."""

    night: dt.date
    source: Path
    model_version: str
    lists: dict[str, list[Encoded]]
    most_recommended: list[Encoded]                   # for users the night does not know
    co_purchased: dict[str, list[tuple[str, float]]]  # item -> [(an item bought with it, weight)]
    loaded_at: float = field(default_factory=time.time)

    @property
    def cutoff(self) -> dt.datetime:
        """The end of the night's data: purchases from here on are news to its lists."""
        return dt.datetime.combine(self.night + dt.timedelta(days=1), dt.time())

    def answer(self, user: str, k: int, bought_since: list[str]) -> bytes:
        items, fallback = (self.lists[user], False) if user in self.lists else (self.most_recommended, True)
        if bought_since:
            items = self.after_purchases(items, bought_since)
        head = json.dumps({"user": user, "night": self.night.isoformat(), "model_version": self.model_version,
                           "fallback": fallback, "purchases_since_night": len(bought_since)})
        return f'{head[:-1]}, "items": [{", ".join(encoded for _, encoded in items[:k])}]}}'.encode()

    def after_purchases(self, items: list[Encoded], bought: list[str]) -> list[Encoded]:
        """The list without what was bought since the night, re-ordered by 1/position plus the summed
        co-purchase weight with today's purchases: what goes with them moves up, nothing joins.
        (Putting every co-purchase neighbour first, listed or not, halved Recall@20 on Online Retail's
        2011-11-10 night: a wholesaler's basket has dozens of items, each with its neighbours;
        BENCHMARKS.md.)"""
        gone = set(bought)
        boost: dict[str, float] = {}
        for item in bought:
            for other, weight in self.co_purchased.get(item, ()):
                boost[other] = boost.get(other, 0.0) + weight
        kept = [(item, encoded) for item, encoded in items if item not in gone]
        order = sorted(range(len(kept)), key=lambda i: (-(1.0 / (i + 1) + boost.get(kept[i][0], 0.0)), i))
        return [kept[i] for i in order]


def read_published(path: Path, columns: list[str], order: str, what: str, may_be_empty: bool = False) -> list[tuple]:
    """The rows of a published Parquet file, checked: BrokenPublication names the file and what is
    wrong (unreadable, a column missing, no rows unless `may_be_empty`)."""
    try:
        with duckdb.connect() as conn:
            relation = conn.read_parquet(str(path))
            missing = set(columns) - set(relation.columns)
            if missing:
                raise BrokenPublication(f"{path.name} ({what}): columns {sorted(missing)} missing")
            found = relation.project(", ".join(columns)).order(order).fetchall()
    except duckdb.Error as exc:
        raise BrokenPublication(f"{path.name} ({what}): not a readable Parquet file "
                                f"({str(exc).splitlines()[0]})") from None
    if not found and not may_be_empty:
        raise BrokenPublication(f"{path.name} ({what}): no rows")
    return found


def read_night(path: Path) -> Night:
    """Read and check a published night completely; BrokenPublication says what is wrong."""
    found = read_published(path, ["partition_date", "user_id", "item_id", "rank", "score", "reason", "model_version",
                                  "title"], "user_id, rank", "recommendations")
    lists: dict[str, list[Encoded]] = {}
    counts: dict[str, float] = {}
    titles: dict[str, str | None] = {}
    for _, user, item, rank, score, reason, _, title in found:
        lists.setdefault(str(user), []).append((str(item), json.dumps(
            {"item": str(item), "title": title, "rank": int(rank), "score": round(float(score), 6), "reason": reason})))
        counts[str(item)] = counts.get(str(item), 0.0) + 1.0 / rank  # rank-weighted: top places count most
        titles[str(item)] = title
    popular = sorted(counts, key=lambda item: (-counts[item], item))[:FALLBACK_ITEMS]
    most_recommended = [(item, json.dumps({"item": item, "title": titles[item], "rank": r,
                                           "score": round(counts[item], 6), "reason": "often recommended tonight"}))
                        for r, item in enumerate(popular, 1)]
    return Night(found[0][0], path, str(found[0][6]), lists, most_recommended,
                 read_co_purchase(path.parent.parent / "co_purchase" / path.name))


def read_co_purchase(path: Path) -> dict[str, list[tuple[str, float]]]:
    """The night's co-purchase neighbours; none when the night was published without them."""
    if not path.exists():
        return {}
    found = read_published(path, ["item_id", "other_id", "weight"], "item_id, weight DESC", "co-purchase",
                           may_be_empty=True)  # a small shop's night may have no co-purchases
    neighbours: dict[str, list[tuple[str, float]]] = {}
    for item, other, weight in found:
        neighbours.setdefault(str(item), []).append((str(other), float(weight)))
    return neighbours


@dataclass(frozen=True)
class SimilarItems:
    """One published run of similar items: each item's neighbours in rank order, encoded once."""

    night: dt.date
    source: Path
    model_version: str
    neighbours: dict[str, list[str]]
    loaded_at: float = field(default_factory=time.time)

    def answer(self, item: str, k: int) -> bytes:
        head = json.dumps({"item": item, "night": self.night.isoformat(), "model_version": self.model_version})
        return f'{head[:-1]}, "items": [{", ".join(self.neighbours[item][:k])}]}}'.encode()


def read_similar_items(path: Path) -> SimilarItems:
    found = read_published(path, ["item_id", "similar_item_id", "rank", "score", "model_version", "title"],
                           "item_id, rank", "similar items")
    neighbours: dict[str, list[str]] = {}
    for item, other, rank, score, _, title in found:
        neighbours.setdefault(str(item), []).append(json.dumps(
            {"item": str(other), "title": title, "rank": int(rank), "score": round(float(score), 6)}))
    return SimilarItems(dt.date.fromisoformat(path.stem), path, str(found[0][4]), neighbours)


def _newest(folder: Path) -> Path | None:
    files = sorted(folder.glob("????-??-??.parquet")) if folder.is_dir() else []
    return files[-1] if files else None


def _unchanged(loaded: Night | SimilarItems | None, newest: Path) -> bool:
    return loaded is not None and loaded.source == newest and newest.stat().st_mtime <= loaded.loaded_at


class Purchase(BaseModel):
    """A purchase as it happens; `ts` (UTC) defaults to the time it is posted."""

    model_config = ConfigDict(extra="forbid")
    user: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    item: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    ts: dt.datetime | None = None


class Intraday:
    """Purchases posted since the served night, by user; a journal of one JSON line each per day."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.lock = threading.Lock()
        self.bought: dict[str, list[tuple[dt.datetime, str]]] = {}
        for journal in self._journals():
            for line in journal.read_text().splitlines():
                event = json.loads(line)
                self.bought.setdefault(event["user"], []).append((dt.datetime.fromisoformat(event["ts"]), event["item"]))

    def _journals(self) -> list[Path]:
        return sorted(self.folder.glob("????-??-??.jsonl")) if self.folder.is_dir() else []

    def record(self, purchases: list[Purchase], now: dt.datetime) -> int:
        """Remember the purchases and append them to their days' journals (flushed to disk)."""
        with self.lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            by_day: dict[Path, list[str]] = {}
            for purchase in purchases:
                when = purchase.ts or now
                ts = when.astimezone(dt.UTC).replace(tzinfo=None) if when.tzinfo else when  # naive UTC, as the data
                self.bought.setdefault(purchase.user, []).append((ts, purchase.item))
                by_day.setdefault(self.folder / f"{ts.date().isoformat()}.jsonl", []).append(
                    json.dumps({"user": purchase.user, "item": purchase.item, "ts": ts.isoformat()}))
            for journal, lines in by_day.items():
                with journal.open("a") as handle:
                    handle.write("\n".join(lines) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
        return len(purchases)

    def since(self, user: str, cutoff: dt.datetime) -> list[str]:
        """What `user` bought from `cutoff` on, oldest first."""
        return [item for ts, item in sorted(self.bought.get(user, ())) if ts >= cutoff]

    def forget_before(self, cutoff: dt.datetime) -> None:
        """Once a night covering them is served: drop the purchases before its cutoff, and their journals."""
        with self.lock:
            self.bought = {user: kept for user, events in self.bought.items()
                           if (kept := [(ts, item) for ts, item in events if ts >= cutoff])}
            for journal in self._journals():
                if dt.date.fromisoformat(journal.stem) < cutoff.date():
                    journal.unlink(missing_ok=True)


class NightStore:
    """The night being served, replaced whole when a newer good one is published, and the
    purchases posted since it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.intraday = Intraday(folder.parent / "intraday")
        self.current: Night | None = None
        self.similar: SimilarItems | None = None
        # Each publication's last problem, kept apart: a good similar-items file does not clear a
        # broken night's problem, nor a good night a broken similar-items file's.
        self.night_problem: str | None = None
        self.similar_problem: str | None = None

    @property
    def problem(self) -> str | None:
        return "; ".join(p for p in (self.night_problem, self.similar_problem) if p) or None

    def refresh(self) -> None:
        self._refresh_night()
        self._refresh_similar()

    def _refresh_night(self) -> None:
        newest = _newest(self.folder)
        if newest is None:
            self.night_problem = None if self.current else f"no published night in {self.folder}"
            return
        current = self.current
        if _unchanged(current, newest):
            return
        try:
            night = read_night(newest)
        except BrokenPublication as exc:
            self.night_problem = f"{exc}; still serving {current.night if current else 'nothing'}"
            return
        self.current, self.night_problem = night, None  # one assignment: a request sees the old or the new night
        self.intraday.forget_before(night.cutoff)

    def _refresh_similar(self) -> None:
        """Similar items are published by their own asset, after the lists: watched on their own."""
        newest = _newest(self.folder.parent / "similar_items")
        if newest is None or _unchanged(self.similar, newest):
            return
        try:
            self.similar, self.similar_problem = read_similar_items(newest), None
        except BrokenPublication as exc:
            self.similar_problem = f"{exc}; still serving {self.similar.night if self.similar else 'no'} similar items"

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

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request, exc: RequestValidationError) -> JSONResponse:
        # names what is wrong and where, never echoing the input (it may not even be text)
        return error(422, "; ".join(f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in exc.errors()))

    # async: nothing here blocks (dictionary lookups), so no thread pool hop per request
    @app.get("/users/{user}/recommendations")
    async def recommendations(user: str = PathParameter(min_length=1, max_length=MAX_ID_LENGTH),
                              k: int = Query(10, ge=1, le=MAX_K)):
        night = store.current
        if night is None:
            return error(503, store.problem or "no night published yet")
        return Response(night.answer(user, k, store.intraday.since(user, night.cutoff)), media_type="application/json")

    @app.get("/items/{item}/similar")
    async def similar(item: str = PathParameter(min_length=1, max_length=MAX_ID_LENGTH),
                      k: int = Query(10, ge=1, le=MAX_K)):
        published = store.similar
        if published is None:
            return error(503, "no similar items published yet")
        if item not in published.neighbours:
            return error(404, f"item {item!r} has no similar items in the night of {published.night}")
        return Response(published.answer(item, k), media_type="application/json")

    @app.post("/events", status_code=202)
    def events(purchases: list[Purchase] = Body(min_length=1, max_length=MAX_EVENTS)):
        return {"accepted": store.intraday.record(purchases, dt.datetime.now(dt.UTC))}

    @app.get("/health")
    async def health():
        night = store.current
        if night is None:
            return error(503, store.problem or "no night published yet")
        return {"night": night.night.isoformat(), "model_version": night.model_version, "users": len(night.lists),
                "age_hours": round((time.time() - night.source.stat().st_mtime) / 3600, 2),
                "source": night.source.name, "co_purchase": bool(night.co_purchased),
                "similar_items": store.similar.night.isoformat() if store.similar else None,
                "users_with_purchases_since": len(store.intraday.bought), "problem": store.problem}

    return app


def main() -> None:
    uvicorn.run(create_app(), host=settings.api_host(), port=settings.api_port(), log_level="warning")


if __name__ == "__main__":
    main()
