import datetime as dt

import pytest
import torch

from tests.conftest import write_text
from unirec_dagster.graph import KGParams, build_snapshot, load_graph
from unirec_dagster.graph.checks import check_snapshot, relations_out_of_bounds
from unirec_dagster.ingest import build_catalog, ingest_days
from unirec_dagster.synthetic import generate, write_dataset
from unirec_dagster.warehouse import rows

D1, D2, D3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)
PARAMS = KGParams(half_life_days=1.0, price_bands=2, keyword_min_items=2, keyword_max_item_share=0.9,
                  keywords_per_item=2, cooccurrence_min_support=2, cooccurrence_top_n=1)


@pytest.fixture
def shop(tmp_path, load):
    # Baskets: b1 {A,B,C}, b2 {A,B}, b3 {A,C} on day 1; day 2 adds b4 {A,C} and a new item D.
    write_text(tmp_path / "2024-01-01.csv", """
        basket,user,item,title,price,kind,ts,country
        b1,u1,A,Red Wooden Heart,1.0,buy,2024-01-01 10:00:00,UK
        b1,u1,B,Red Glass Candle,2.0,buy,2024-01-01 10:00:00,UK
        b1,u1,C,Blue Wooden Box,3.0,buy,2024-01-01 10:00:00,UK
        b2,u2,A,Red Wooden Heart,1.0,buy,2024-01-01 11:00:00,FR
        b2,u2,B,Red Glass Candle,2.0,buy,2024-01-01 11:00:00,FR
        b3,u3,A,Red Wooden Heart,1.0,buy,2024-01-01 12:00:00,UK
        b3,u3,C,Blue Wooden Box,3.0,buy,2024-01-01 12:00:00,UK
        b3,u3,C,Blue Wooden Box,3.0,view,2024-01-01 12:30:00,UK
        """)
    write_text(tmp_path / "2024-01-02.csv", """
        basket,user,item,title,price,kind,ts,country
        b4,u1,A,Red Wooden Heart,1.0,buy,2024-01-02 09:00:00,UK
        b4,u1,C,Blue Wooden Box,3.0,buy,2024-01-02 09:00:00,UK
        b5,u4,D,Green Glass Lamp,9.0,buy,2024-01-02 10:00:00,DE
        """)
    return load(
        {"session_id": "basket", "event_type": {"column": "kind", "mapping": {"buy": "purchase", "view": "view"}}},
        items={"title": "title", "price": "price"},
        users={"attributes": {"country": "country"}},
    )


def triples(conn, day, relation):
    return rows(conn, """
        SELECT h.natural_key, t.natural_key, round(weight, 4), event_count
        FROM kg.triples x JOIN kg.relations r USING (relation_id)
        JOIN kg.entities h ON h.entity_id = x.head_id JOIN kg.entities t ON t.entity_id = x.tail_id
        WHERE snapshot_date = ? AND r.name = ? ORDER BY 1, 2""", [day, relation])


def test_exact_triples_of_a_small_log(conn, shop):
    ingest_days(conn, shop, [D1, D2])
    build_snapshot(conn, shop, D1, PARAMS)
    # Half-life one day, cut at the end of D1: an event at 12:00 is 12 hours old -> weight 2^-0.5.
    def aged(hours: float) -> float:
        return round(2 ** (-hours / 24), 4)

    assert triples(conn, D1, "purchase") == [
        ("u1", "A", aged(14), 1), ("u1", "B", aged(14), 1), ("u1", "C", aged(14), 1),
        ("u2", "A", aged(13), 1), ("u2", "B", aged(13), 1),
        ("u3", "A", aged(12), 1), ("u3", "C", aged(12), 1),
    ]
    assert triples(conn, D1, "view") == [("u3", "C", aged(11.5), 1)]
    # Co-occurrence: A-B in b1,b2 (support 2, Jaccard 2/(3+2-2)); A-C in b1,b3 (2/(3+2-2)); B-C only in b1.
    # Top-1 per item, ties broken by support then id: A keeps B.
    assert triples(conn, D1, "item_co_occurs") == [
        ("A", "B", round(2 / 3, 4), 2), ("B", "A", round(2 / 3, 4), 2), ("C", "A", round(2 / 3, 4), 2),
    ]
    # Keywords: in >= 2 items: red (A,B), wooden (A,C); 'blue', 'glass', 'heart', ... occur once.
    assert triples(conn, D1, "item_keyword") == [
        ("A", "red", round(float(torch.log(torch.tensor(1.5))), 4), None),
        ("A", "wooden", round(float(torch.log(torch.tensor(1.5))), 4), None),
        ("B", "red", round(float(torch.log(torch.tensor(1.5))), 4), None),
        ("C", "wooden", round(float(torch.log(torch.tensor(1.5))), 4), None),
    ]
    assert [(h, t) for h, t, _, _ in triples(conn, D1, "item_price_band")] == [("A", "q1"), ("B", "q1"), ("C", "q2")]
    assert [(h, t) for h, t, _, _ in triples(conn, D1, "user_country")] == [("u1", "UK"), ("u2", "FR"), ("u3", "UK")]
    integrity = check_snapshot(conn, D1)
    assert integrity.dangling_triples == 0 and integrity.items_without_entity == 0
    assert relations_out_of_bounds(conn, D1, PARAMS) == {}
    assert relations_out_of_bounds(conn, D1, PARAMS.model_copy(update={"min_relation_triples": 4}))["user_country"] == 3


def test_as_of_build_ignores_later_events(conn, shop):
    ingest_days(conn, shop, [D1, D2])
    build_catalog(conn, shop, "items")
    build_snapshot(conn, shop, D1, PARAMS)
    keys = {k for (k,) in rows(conn, "SELECT natural_key FROM kg.entities")}
    assert "D" not in keys and "u4" not in keys and "DE" not in keys
    assert rows(conn, "SELECT max(last_seen) FROM kg.triples WHERE snapshot_date = ?", [D1])[0][0] < dt.datetime(2024, 1, 2)


def test_a_historic_snapshot_loads_only_its_own_entities(conn, shop):
    """D2 (a new item D, user u4, country DE, keyword "glass") built before D1: D1's graph still has
    none of them as nodes, whatever the build order; its entity ids are the global ones."""
    ingest_days(conn, shop, [D1, D2])
    build_snapshot(conn, shop, D2, PARAMS)
    build_snapshot(conn, shop, D1, PARAMS)
    id_of = {k: i for i, k in rows(conn, "SELECT entity_id, entity_type || ':' || natural_key FROM kg.entities")}
    later = [id_of[k] for k in ("item:D", "user:u4", "country:DE")]

    def nodes(graph) -> set[int]:
        return set(torch.nonzero(graph.entity_type >= 0).flatten().tolist())

    old, new = load_graph(conn, D1), load_graph(conn, D2)
    assert old.num_entities == new.num_entities == len(id_of)
    assert not set(later) & nodes(old) and set(later) <= nodes(new)
    # "glass" becomes a keyword on D2 only (a second item with it: keyword_min_items is 2).
    assert nodes(old) == {i for k, i in id_of.items() if k not in ("item:D", "user:u4", "country:DE", "keyword:glass")}
    assert id_of["item:D"] not in old.nodes_of_type("item").tolist()
    # A validation fit reads D1's triples with the entities of D2 (items first sold in its window).
    wider = load_graph(conn, D1, entities_of=D2)
    assert nodes(wider) == nodes(new) and all(torch.equal(wider.edge_index[r], old.edge_index[r]) for r in old.edge_index)


def test_ids_are_stable_when_new_data_arrives(conn, shop):
    ingest_days(conn, shop, [D1])
    build_snapshot(conn, shop, D1, PARAMS)
    before = dict(rows(conn, "SELECT entity_type || ':' || natural_key, entity_id FROM kg.entities"))
    relations = dict(rows(conn, "SELECT name, relation_id FROM kg.relations"))
    ingest_days(conn, shop, [D2])
    stats = build_snapshot(conn, shop, D2, PARAMS)
    build_snapshot(conn, shop, D2, PARAMS)  # a re-run gives nothing new
    after = dict(rows(conn, "SELECT entity_type || ':' || natural_key, entity_id FROM kg.entities"))
    assert {k: after[k] for k in before} == before
    assert {"item:D", "user:u4", "country:DE"} <= set(after) - set(before)
    assert min(after[k] for k in set(after) - set(before)) > max(before.values())
    assert stats.new_entities == len(after) - len(before)
    assert {k: v for k, v in rows(conn, "SELECT name, relation_id FROM kg.relations") if k in relations} == relations
    assert rows(conn, "SELECT count(*), count(DISTINCT entity_id) FROM kg.entities")[0] == (len(after), len(after))


def test_loader_builds_tensors_per_relation(conn, shop):
    ingest_days(conn, shop, [D1, D2])
    build_snapshot(conn, shop, D2, PARAMS)
    graph = load_graph(conn)
    assert graph.snapshot_date == D2
    n_triples = rows(conn, "SELECT count(*) FROM kg.triples")[0][0]
    assert sum(e.shape[1] for e in graph.edge_index.values()) == n_triples
    items = graph.nodes_of_type("item")
    assert len(items) == 4
    purchases = graph.edge_index["purchase"]
    assert set(graph.entity_type[purchases[0]].tolist()) == {graph.type_names.index("user")}
    assert set(graph.entity_type[purchases[1]].tolist()) == {graph.type_names.index("item")}
    assert graph.edge_weight["purchase"].dtype == torch.float32
    key_of = dict(rows(conn, "SELECT entity_id, natural_key FROM kg.entities"))
    pairs = {(key_of[h], key_of[t]) for h, t in graph.edge_index["item_co_occurs"].T.tolist()}
    assert ("A", "C") in pairs

    # An item's interactions can be hidden (the ranker's simulated new items): its attributes stay.
    item_c = next(e for e, k in key_of.items() if k == "C")
    hidden = graph.without_interactions(torch.tensor([item_c]))
    for name, kinds in zip(graph.relation_names, graph.relation_types):
        edges, kept = graph.edge_index[name], hidden.edge_index[name]
        if set(kinds) == {"user", "item"}:
            assert not (kept == item_c).any() and kept.shape[1] == int((edges[1] != item_c).sum())
            assert len(hidden.edge_weight[name]) == kept.shape[1]
        else:
            assert torch.equal(kept, edges)
    assert (graph.edge_index["purchase"][1] == item_c).any()      # the snapshot itself is unchanged


def test_synthetic_log_has_realistic_shape(tmp_path, conn):
    from unirec_dagster.datasets import load_spec

    log = generate(20_000, n_days=10, seed=1)
    spec = load_spec(write_dataset(log, tmp_path / "synth"))
    days = [spec.events.start_date + dt.timedelta(days=i) for i in range(10)]
    stats = ingest_days(conn, spec, days)
    assert sum(s.lines_read for s in stats) == 20_000
    top_share = rows(conn, """
        SELECT max(n) / sum(n) FROM (SELECT item_id, count(*) n FROM raw.events GROUP BY 1)""")[0][0]
    assert top_share > 5 / rows(conn, "SELECT count(DISTINCT item_id) FROM raw.events")[0][0]  # skewed, not uniform
    snapshot = build_snapshot(conn, spec, days[-1])
    assert snapshot.triples_by_relation["item_category"] > 0 and snapshot.triples_by_relation["item_co_occurs"] > 0
