"""The in-memory matcher: exact against brute force, both aggregations, incremental changes, the int8 paths,
and consistency while threads enrol, delete and search at once."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

from edge.store import StoreError
from edge.store.db import Store, TemplateIn
from edge.store.matcher import Matcher, int8_kernel

DIM = 64
needs_int8 = pytest.mark.skipif(int8_kernel() is None, reason="onnxruntime int8 kernel unavailable or inexact")


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def gallery(rng: np.random.Generator, identities: int) -> dict[str, np.ndarray]:
    """Identities with 1 to 4 templates each, clustered around a centre like real faces."""
    out = {}
    for i in range(identities):
        centre = unit(rng, 1)
        out[f"id{i}"] = centre + 0.6 * unit(rng, int(rng.integers(1, 5))) / np.sqrt(2)
    return out


def brute(g: dict[str, np.ndarray], queries: np.ndarray, k: int, aggregate: str) -> list[list[tuple[str, float]]]:
    names = list(g)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    if aggregate == "max":
        scores = np.stack([(q @ (v / np.linalg.norm(v, axis=1, keepdims=True)).T).max(axis=1) for v in g.values()])
    else:
        means = np.stack([(v / np.linalg.norm(v, axis=1, keepdims=True)).mean(axis=0) for v in g.values()])
        scores = (q @ (means / np.linalg.norm(means, axis=1, keepdims=True)).T).T
    return [[(names[j], float(scores[j, i])) for j in np.argsort(-scores[:, i])[:k]] for i in range(len(q))]


def same(got, want, tol: float = 1e-5) -> bool:
    return [m.name for m in got] == [n for n, _ in want] and all(
        abs(m.score - s) < tol for m, (_, s) in zip(got, want, strict=True))


def build(g: dict[str, np.ndarray], **kwargs) -> Matcher:
    m = Matcher(dim=DIM, **kwargs)
    m.load((name, v) for name, vs in g.items() for v in vs)
    return m


def probes(rng: np.random.Generator, g: dict[str, np.ndarray], n: int, noise: float = 0.3) -> np.ndarray:
    rows = np.concatenate(list(g.values()))
    picked = rows[rng.integers(0, len(rows), n)]
    return np.concatenate([picked + noise * unit(rng, n) / np.sqrt(DIM) * 4, unit(rng, n // 4)])


@pytest.mark.parametrize("aggregate", ["max", "mean"])
@pytest.mark.parametrize("int8", [False, pytest.param(True, marks=needs_int8)])
def test_exact_search_equals_brute_force(aggregate, int8):
    rng = np.random.default_rng(1)
    g = gallery(rng, 1500)
    m = build(g, aggregate=aggregate, int8=int8)
    m.INT8_MIN_ROWS = 0  # exercise the int8 scan on a small gallery too
    assert m.int8 == int8
    q = probes(rng, g, 80)
    want = brute(g, q, 5, aggregate)
    assert all(same(got, w) for got, w in zip(m.search(q, 5), want, strict=True))  # batched
    assert all(same(m.search(x, 5)[0], w) for x, w in zip(q, want, strict=True))  # one at a time
    assert m.search(q[0], 1)[0][0].name == want[0][0][0]
    assert len(m) == 1500 and m.rows == (1500 if aggregate == "mean" else sum(len(v) for v in g.values()))


def test_max_and_mean_aggregation_differ_as_defined():
    q = np.eye(DIM, dtype=np.float32)[0]
    far = np.eye(DIM, dtype=np.float32)[1]
    near = np.cos(0.6) * q + np.sin(0.6) * far  # cosine 0.825 to q
    near2 = np.cos(0.6) * q - np.sin(0.6) * far
    g = {"one-perfect-one-far": np.stack([q, far]), "two-good": np.stack([near, near2])}
    top_max = build(g, aggregate="max").search(q, 2)[0]
    top_mean = build(g, aggregate="mean").search(q, 2)[0]
    assert [m.name for m in top_max] == ["one-perfect-one-far", "two-good"]
    assert top_max[0].score == pytest.approx(1.0) and top_max[1].score == pytest.approx(np.cos(0.6))
    assert [m.name for m in top_mean] == ["two-good", "one-perfect-one-far"]
    assert top_mean[0].score == pytest.approx(1.0, abs=1e-6)  # the two 'good' ones average onto q
    assert top_mean[1].score == pytest.approx(1 / np.sqrt(2))


@pytest.mark.parametrize("aggregate", ["max", "mean"])
def test_incremental_changes_equal_a_fresh_load(aggregate):
    rng = np.random.default_rng(2)
    m = Matcher(dim=DIM, aggregate=aggregate)
    m.COMPACT_MIN = 16  # rebuild often, so compaction is exercised
    state: dict[str, np.ndarray] = {}
    for step in range(1500):
        name = f"id{rng.integers(0, 300)}"
        op = rng.random()
        if op < 0.5:
            v = unit(rng, int(rng.integers(1, 3)))
            m.add(name, v)
            state[name] = np.concatenate([state[name], v]) if name in state else v
        elif op < 0.8:
            assert m.remove(name) == (name in state)
            state.pop(name, None)
        else:
            v = unit(rng, 2)
            m.replace(name, v)
            state[name] = v
        if step % 250 == 0:
            assert sorted(m.names()) == sorted(state)
    q = probes(rng, state, 60)
    want = brute(state, q, 3, aggregate)
    assert all(same(got, w) for got, w in zip(m.search(q, 3), want, strict=True))
    fresh = build(state, aggregate=aggregate)
    assert [[x.name for x in r] for r in m.search(q, 3)] == [[x.name for x in r] for r in fresh.search(q, 3)]
    assert m.rows == fresh.rows


def test_empty_and_invalid_inputs():
    m = Matcher(dim=DIM)
    assert m.search(np.ones(DIM, np.float32), 3) == [[]]
    with pytest.raises(StoreError, match="64-d"):
        m.add("a", np.ones(DIM + 1, np.float32))
    with pytest.raises(StoreError, match="NaN"):
        m.add("a", np.full(DIM, np.nan, np.float32))
    with pytest.raises(StoreError, match="aggregate"):
        Matcher(aggregate="median")
    m.add("a", np.ones(DIM, np.float32))
    assert [x.name for x in m.search(np.ones(DIM), 5)[0]] == ["a"]  # k beyond the gallery is fine
    assert not m.remove("nobody")


@needs_int8
def test_int8_paths_on_a_large_gallery():
    rng = np.random.default_rng(3)
    n, dim = 60_000, 128
    rows = unit(rng, n, dim)
    names = [f"id{i}" for i in range(n)]
    exact = Matcher(dim=dim, int8=False)
    quant = Matcher(dim=dim, int8=True)
    for m in (exact, quant):
        m.load(zip(names, rows, strict=True))
    assert quant.int8 and not exact.int8
    picked = rng.integers(0, n, 2000)
    q = rows[picked] + 0.6 * unit(rng, 2000, dim) / np.sqrt(2)  # cosine ≈ 0.85 to their source
    want = [r[0].name for r in exact.search(q, 1)]
    approx = [r[0].name for r in quant.search(q, 1, exact=False)]
    assert np.mean([a == w for a, w in zip(approx, want, strict=True)]) >= 0.999
    single = [quant.search(x, 1, exact=False)[0][0].name for x in q[:300]]
    assert np.mean([a == w for a, w in zip(single, want[:300], strict=True)]) >= 0.99
    # the bounded int8 prefilter is exact, not approximately so
    for x in np.concatenate([q[:200], unit(rng, 50, dim)]):
        assert [(m.name, round(m.score, 5)) for m in quant.search(x, 5)[0]] == \
            [(m.name, round(m.score, 5)) for m in exact.search(x, 5)[0]]
    for i in range(0, 20_000, 2):  # dead rows must never be returned, nor hide live ones
        quant.remove(f"id{i}")
        exact.remove(f"id{i}")
    for x in q[:100]:
        assert [m.name for m in quant.search(x, 3)[0]] == [m.name for m in exact.search(x, 3)[0]]


def test_auto_int8_only_for_large_galleries():
    rng = np.random.default_rng(4)
    small = Matcher(dim=DIM)
    small.load((f"id{i}", v) for i, v in enumerate(unit(rng, 1000)))
    assert not small.int8
    big = Matcher(dim=DIM)
    big.AUTO_INT8_ROWS = 500
    big.load((f"id{i}", v) for i, v in enumerate(unit(rng, 1000)))
    assert big.int8 == (int8_kernel() is not None)


def tpl(v: np.ndarray, embedder: str = "sface") -> TemplateIn:
    return TemplateIn(vector=v, embedder=embedder, manifest_sha256="00", quality={})


def test_follows_the_store(tmp_path):
    rng = np.random.default_rng(5)
    with Store(tmp_path / "s.db") as store:
        a, b = unit(rng, 3), unit(rng, 2)
        store.enroll("alice", [tpl(v) for v in a], "enroll")
        m = Matcher.follow(store, "sface")
        other = Matcher.follow(store, "arcface")
        assert m.names() == ["alice"] and other.names() == []
        store.enroll("bob", [tpl(v) for v in b] + [tpl(unit(rng, 1)[0], "arcface")], "enroll")
        assert m.names() == ["alice", "bob"] and other.names() == ["bob"]
        assert m.search(b[1], 1)[0][0].name == "bob"
        new = unit(rng, 1)
        store.replace_templates("sface", {"alice": [tpl(new[0])]}, "reembed")
        assert m.search(a[0], 1)[0][0].score < 0.9 and m.search(new[0], 1)[0][0].name == "alice"
        store.delete("bob", "delete")
        assert m.names() == ["alice"] and other.names() == []


def test_concurrent_enrol_delete_search(tmp_path):
    """Writers enrol 3-template identities, search for them, delete them, search again, while readers
    search throughout. Every answer must fit some order of the operations: nothing deleted is ever found
    after its delete returned, nothing enrolled is missed after its enrol returned, and no identity is seen
    half-enrolled (its score would be that of a missing or partial template set)."""
    rng = np.random.default_rng(6)
    templates: dict[str, np.ndarray] = {}
    with Store(tmp_path / "s.db") as store:
        def face() -> np.ndarray:  # three templates of one face: close together, so its mean is found too
            x = unit(rng, 1) + 0.4 * unit(rng, 3)
            return x / np.linalg.norm(x, axis=1, keepdims=True)  # unit-length, as every embedder writes them

        for i in range(100):
            templates[f"base{i}"] = face()
            store.enroll(f"base{i}", [tpl(v) for v in templates[f"base{i}"]], "enroll")
        for w in range(4):
            for i in range(30):
                templates[f"w{w}-{i}"] = face()
        exact = Matcher.follow(store, "sface")
        mean = Matcher.follow(store, "sface", aggregate="mean")
        quant = Matcher(embedder="sface", int8=True)
        quant.INT8_MIN_ROWS = 0
        quant.COMPACT_MIN = exact.COMPACT_MIN = mean.COMPACT_MIN = 8
        with store.locked():
            quant.load((n, v) for n, _, v in store.templates("sface"))
            store.subscribe(quant.on_change)
        matchers = [exact, mean, quant]
        unit_means = {n: (v / np.linalg.norm(v, axis=1, keepdims=True)).mean(axis=0) for n, v in templates.items()}

        enrolled: set[str] = {f"base{i}" for i in range(100)}  # enrol returned
        deleting: set[str] = set()  # delete called
        deleted: set[str] = set()  # delete returned
        errors: list[str] = []
        stop = threading.Event()
        lock = threading.Lock()

        def check(name: str, j: int, m: Matcher, before_enrolled: set[str], before_deleted: set[str]) -> None:
            q = templates[name][j]
            res = m.search(q, 3)[0]
            with lock:
                now_deleting = set(deleting)
            for hit in res:
                if hit.name in before_deleted:
                    errors.append(f"{hit.name} found after its delete returned")
                if hit.name == name:
                    mu = unit_means[name]
                    cosine = float(q @ mu) / float(np.linalg.norm(q) * np.linalg.norm(mu))
                    want = 1.0 if m.aggregate == "max" else cosine
                    if abs(hit.score - want) > 1e-4:
                        errors.append(f"{name} seen half-enrolled ({m.aggregate}: {hit.score:.4f} ≠ {want:.4f})")
            if name in before_enrolled and name not in now_deleting and (not res or res[0].name != name):
                errors.append(f"{name} missed after its enrol returned ({m.aggregate}, int8={m.int8})")

        def writer(w: int) -> None:
            r = random.Random(w)
            try:
                for i in range(30):
                    name = f"w{w}-{i}"
                    store.enroll(name, [tpl(v) for v in templates[name]], "enroll")
                    with lock:
                        enrolled.add(name)
                    for m in matchers:
                        check(name, r.randrange(3), m, {name}, set())
                    if i % 2 == 0:
                        with lock:
                            deleting.add(name)
                        store.delete(name, "delete")
                        with lock:
                            deleted.add(name)
                        for m in matchers:
                            check(name, r.randrange(3), m, set(), {name})
            except Exception as exc:  # a thread's exception is otherwise lost
                errors.append(repr(exc))

        def reader(seed: int) -> None:
            r = random.Random(seed)
            names = sorted(templates)
            while not stop.is_set():
                with lock:
                    before_enrolled, before_deleted = set(enrolled), set(deleted)
                check(r.choice(names), r.randrange(3), r.choice(matchers), before_enrolled, before_deleted)

        writers = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        readers = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
        for t in readers + writers:
            t.start()
        deadline = time.monotonic() + 60
        for t in writers:
            t.join(max(0.0, deadline - time.monotonic()))
        stop.set()
        for t in readers:
            t.join()
        assert not any(t.is_alive() for t in writers)
        assert errors == [], errors[:20]
        final = {n for n in templates if n in enrolled and n not in deleted}
        for m in matchers:
            assert set(m.names()) == final
        assert {i.name for i in store.identities()} == final
