"""The read API over published nights (FastAPI's TestClient, real Parquet files written by DuckDB)."""

import datetime as dt
import threading
import time
from pathlib import Path

import duckdb
import pytest
from fastapi.testclient import TestClient

from tests.conftest import write_spec, write_text
from unirec_dagster.api import create_app
from unirec_dagster.datasets import load_spec
from unirec_dagster.ingest import ingest_days
from unirec_dagster.warehouse import connect, rows


def publish(folder: Path, night: str, lists: dict[str, list[str]], model: str = "finetuned-v1",
            co_purchase: dict[str, list[tuple[str, float]]] | None = None) -> Path:
    """A night in the published layout (the columns publish_recommendations writes), renamed into
    place, its co-purchase neighbours first."""
    folder.mkdir(parents=True, exist_ok=True)
    if co_purchase:
        (folder.parent / "co_purchase").mkdir(exist_ok=True)
        with duckdb.connect() as conn:
            conn.execute("CREATE TABLE c (item_id VARCHAR, other_id VARCHAR, weight DOUBLE)")
            conn.executemany("INSERT INTO c VALUES (?, ?, ?)",
                             [(item, other, w) for item, others in co_purchase.items() for other, w in others])
            conn.execute(f"COPY c TO '{folder.parent / 'co_purchase' / f'{night}.parquet'}' (FORMAT parquet)")
    values = [(night, user, item, rank, 1.0 / rank, f"because of {item}", model, "run", f"title {item}")
              for user, items in lists.items() for rank, item in enumerate(items, 1)]
    staging, final = folder / f".{night}.tmp", folder / f"{night}.parquet"
    with duckdb.connect() as conn:
        conn.execute("CREATE TABLE r (partition_date DATE, user_id VARCHAR, item_id VARCHAR, rank INTEGER, score DOUBLE, "
                     "reason VARCHAR, model_version VARCHAR, run_id VARCHAR, title VARCHAR)")
        conn.executemany("INSERT INTO r VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
        conn.execute(f"COPY r TO '{staging}' (FORMAT parquet)")
    staging.rename(final)
    return final


def publish_similar(folder: Path, night: str, neighbours: dict[str, list[str]]) -> None:
    """Similar items in the published layout (publish_similar_items' columns), beside the lists."""
    target = folder.parent / "similar_items"
    target.mkdir(exist_ok=True)
    with duckdb.connect() as conn:
        conn.execute("CREATE TABLE s (item_id VARCHAR, similar_item_id VARCHAR, rank INTEGER, score DOUBLE, "
                     "model_version VARCHAR, title VARCHAR)")
        conn.executemany("INSERT INTO s VALUES (?, ?, ?, ?, ?, ?)", [
            (item, other, rank, 1.0 / rank, "finetuned-v1", f"title {other}")
            for item, others in neighbours.items() for rank, other in enumerate(others, 1)])
        conn.execute(f"COPY s TO '{target / f'{night}.parquet'}' (FORMAT parquet)")


@pytest.fixture
def served(tmp_path):
    folder = tmp_path / "w.serving" / "recommendations"
    publish(folder, "2011-01-14", {"u1": ["A", "B", "C"], "u2": ["B", "D"]},
            co_purchase={"A": [("C", 0.6), ("D", 0.5)], "B": [("A", 0.4)]})
    publish_similar(folder, "2011-01-14", {"A": ["C", "B"], "B": ["A"]})
    app = create_app(folder, refresh_seconds=0)
    return folder, app, TestClient(app)


def test_a_users_list_in_rank_order_and_unknown_users_flagged(served):
    _, _, client = served
    answer = client.get("/users/u1/recommendations", params={"k": 2}).json()
    assert answer["night"] == "2011-01-14" and answer["model_version"] == "finetuned-v1" and not answer["fallback"]
    assert [(i["item"], i["rank"], i["title"], i["reason"]) for i in answer["items"]] == [
        ("A", 1, "title A", "because of A"), ("B", 2, "title B", "because of B")]
    stranger = client.get("/users/nobody/recommendations").json()
    assert stranger["fallback"] and stranger["items"][0]["item"] == "B"  # first for u2, second for u1
    health = client.get("/health").json()
    assert health["night"] == "2011-01-14" and health["users"] == 2 and health["problem"] is None


@pytest.mark.parametrize("path", [
    "/users/" + "x" * 129 + "/recommendations",       # an id longer than any real one
    "/users/u1/recommendations?k=0", "/users/u1/recommendations?k=101", "/users/u1/recommendations?k=-1",
    "/users/u1/recommendations?k=99999999999999999999", "/users/u1/recommendations?k=ten",
    "/users/%FF%FE/recommendations?k=%00", "/nothing/here", "/users/u1",
    "/items/nope/similar", "/items/A/similar?k=0", "/items/" + "y" * 129 + "/similar",
    ("/events", None), ("/events", []), ("/events", [{"user": "u1"}]), ("/events", [{"user": "u1", "item": "A", "x": 1}]),
    ("/events", [{"user": "u1" * 100, "item": "A"}]), ("/events", [{"user": "u1", "item": "A", "ts": "yesterday"}]),
    ("/events", {"user": "u1", "item": "A"}), ("/events", b"\xff\xfe not json"),
])
def test_bad_requests_get_a_4xx_with_a_message(served, path):
    _, _, client = served
    if isinstance(path, tuple):
        body = path[1]
        response = client.post(path[0], content=body) if isinstance(body, bytes) else client.post(path[0], json=body)
    else:
        response = client.get(path)
    assert 400 <= response.status_code < 500, (path, response.status_code)
    assert response.json(), "a message, not an empty body"


def test_a_newer_night_replaces_the_served_one_and_a_broken_one_does_not(served):
    folder, app, client = served
    publish(folder, "2011-01-15", {"u1": ["C", "A"]}, model="finetuned-v2")
    app.state.nights.refresh()
    answer = client.get("/users/u1/recommendations").json()
    assert answer["night"] == "2011-01-15" and [i["item"] for i in answer["items"]] == ["C", "A"]
    (folder / "2011-01-16.parquet").write_bytes(b"PAR1 half a file")  # a broken publication
    app.state.nights.refresh()
    assert client.get("/users/u1/recommendations").json()["night"] == "2011-01-15"
    health = client.get("/health").json()
    assert health["night"] == "2011-01-15" and "2011-01-16.parquet" in health["problem"] and "still serving" in health["problem"]


def test_no_request_fails_while_nights_are_swapped(served):
    folder, app, client = served
    publish(folder, "2011-01-15", {"u1": ["C", "A"], "u2": ["D"]})
    failures, answers, stop = [], set(), threading.Event()

    def read():
        while not stop.is_set():
            response = client.get("/users/u1/recommendations")
            if response.status_code != 200:
                failures.append(response.status_code)
            else:
                answers.add(response.json()["night"])

    readers = [threading.Thread(target=read) for _ in range(4)]
    for reader in readers:
        reader.start()
    for night in ("2011-01-16", "2011-01-17", "2011-01-18"):
        app.state.nights.refresh()
        publish(folder, night, {"u1": ["A"]})
    app.state.nights.refresh()
    deadline = time.monotonic() + 30  # the readers go on until one of them has read the newest night
    while "2011-01-18" not in answers and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    for reader in readers:
        reader.join()
    assert not failures and "2011-01-18" in answers


def test_a_purchase_posted_today_leaves_the_list_and_what_goes_with_it_moves_up(served, tmp_path):
    folder, app, client = served
    assert client.post("/events", json=[{"user": "u1", "item": "A", "ts": "2011-01-15T10:30:00"},
                                        {"user": "u1", "item": "B", "ts": "2011-01-14T09:00:00"}]).json() == {"accepted": 2}
    answer = client.get("/users/u1/recommendations").json()
    # A is gone; C, bought with A (weight 0.6), moves above B: 1/2 + 0.6 against 1/1; D, also bought
    # with A but not on u1's list, does not join it. B was bought before the night's cutoff, which
    # the night already knew.
    assert [i["item"] for i in answer["items"]] == ["C", "B"] and answer["purchases_since_night"] == 1
    assert answer["items"][0]["reason"] == "because of C"
    assert [i["item"] for i in client.get("/users/u2/recommendations").json()["items"]] == ["B", "D"]

    restarted = TestClient(create_app(folder, refresh_seconds=0))  # the journal keeps today's purchases
    assert [i["item"] for i in restarted.get("/users/u1/recommendations").json()["items"]] == ["C", "B"]

    publish(folder, "2011-01-15", {"u1": ["B", "C"]})  # the night that covers the purchase
    app.state.nights.refresh()
    assert [i["item"] for i in client.get("/users/u1/recommendations").json()["items"]] == ["B", "C"]
    assert not list((folder.parent / "intraday").glob("*.jsonl")), "journals of covered days are dropped"


def test_similar_items_of_the_newest_publication(served):
    folder, app, client = served
    answer = client.get("/items/A/similar", params={"k": 5}).json()
    assert answer["night"] == "2011-01-14" and [(i["item"], i["title"], i["rank"]) for i in answer["items"]] == [
        ("C", "title C", 1), ("B", "title B", 2)]
    assert client.get("/health").json()["similar_items"] == "2011-01-14"
    (folder.parent / "similar_items" / "2011-01-15.parquet").write_bytes(b"not parquet")
    app.state.nights.refresh()
    assert client.get("/items/A/similar").json()["night"] == "2011-01-14"  # the last good one stays
    assert "similar items" in client.get("/health").json()["problem"]
    (folder / "2011-01-16.parquet").write_bytes(b"PAR1 half a file")  # a broken night beside it
    publish_similar(folder, "2011-01-16", {"A": ["B"]})
    app.state.nights.refresh()
    health = client.get("/health").json()   # the good similar items clear their own problem, not the night's
    assert health["similar_items"] == "2011-01-16" and "similar items" not in health["problem"]
    assert "2011-01-16.parquet" in health["problem"] and "still serving 2011-01-14" in health["problem"]


def test_purchases_posted_during_the_day_and_then_its_file_are_the_file_alone(tmp_path):
    """The API's intraday journal is for serving only: ingesting the day's file after purchases were
    posted gives the warehouse the file alone would, so nothing is counted twice (or lost)."""
    write_text(tmp_path / "2011-01-15.csv", """
        user,item,ts
        u1,A,2011-01-15 10:30:00
        u2,C,2011-01-15 11:00:00
        """)
    spec = load_spec(write_spec(tmp_path, {"start_date": "2011-01-15"}))
    events = "SELECT user_id, item_id, ts, event_type FROM raw.events ORDER BY ALL"

    alone = connect(tmp_path / "alone.duckdb")
    ingest_days(alone, spec, [dt.date(2011, 1, 15)])
    expected = rows(alone, events)
    alone.close()
    assert len(expected) == 2

    warehouse = tmp_path / "served.duckdb"
    folder = warehouse.with_suffix(".serving") / "recommendations"
    publish(folder, "2011-01-14", {"u1": ["A", "B"], "u2": ["C", "D"]})
    client = TestClient(create_app(folder, refresh_seconds=0))
    assert client.post("/events", json=[{"user": "u1", "item": "A", "ts": "2011-01-15T10:30:00"},
                                        {"user": "u2", "item": "C", "ts": "2011-01-15T11:00:00"},
                                        {"user": "u3", "item": "B", "ts": "2011-01-15T12:00:00"}]).json() == {"accepted": 3}
    assert list((warehouse.with_suffix(".serving") / "intraday").glob("*.jsonl")), "the posts are journaled"
    served = connect(warehouse)
    ingest_days(served, spec, [dt.date(2011, 1, 15)])
    assert rows(served, events) == expected
    served.close()
