"""In-memory gallery for one embedder: exact cosine top-k over identities, kept in step with the store.

Layout. Rows (L2-normalised float32 templates, or one mean row per identity with aggregate="mean") live in
one preallocated matrix that only grows by appending; a removed row is only listed as dead. A search reads
an immutable snapshot (matrix, row count, dead rows) taken with one attribute read, so a concurrent change
is either wholly visible to it or not at all, and no search ever copies the gallery. Writers append past
every published row count (invisible to older snapshots) and publish a new snapshot under a lock; when the
matrix is full or a quarter of it is dead, it is rebuilt into a fresh one (amortised O(1) per row).

Speed. One query against N rows is a float32 matrix-vector product (numpy/BLAS), bandwidth-bound at 4·D
bytes per row, so it cannot beat another float32 scan (faiss IndexFlatIP ties with it). Large galleries
therefore also keep 8-bit codes (per-dimension scale; `int8=True` always, `int8=None` from
AUTO_INT8_ROWS rows, `int8=False` never; +25 % memory) and single queries scan those with onnxruntime's
MatMulInteger, a quarter of the bytes:
- exact search stays exact: every row's int8 score is within a proven bound B of its float32 score, so all
  rows within 2B of the m-th best approximate score are re-scored in float32, and no true top-m row can
  fall outside that set;
- `exact=False` re-scores only the best `rerank` approximate rows (the "compressed" search).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from edge.embed import l2_normalise
from edge.store import StoreError

if TYPE_CHECKING:
    from edge.store.db import Store

INT32_MIN = np.iinfo(np.int32).min


class Match(NamedTuple):
    name: str
    score: float


@dataclass(frozen=True)
class _Codes:
    kernel: _Int8Kernel
    data: np.ndarray  # (capacity, D) uint8: the int8 code + 128 (MatMulInteger's fast u8 × s8 kernel)
    scale: np.ndarray  # (D,) float64: x_d ≈ scale_d · code_d
    code_norm: float  # max over rows of ‖code‖₂
    residual: float  # max over rows of ‖x − scale ∘ code‖₂


@dataclass(frozen=True)
class _Snapshot:
    vecs: np.ndarray  # (capacity, D) float32; rows [0, n) belong to this snapshot
    labels: np.ndarray  # (capacity,) int32: row → slot
    names: list[str]  # slot → identity name (append-only between rebuilds)
    n: int
    dead: np.ndarray  # int64 rows < n that no longer count
    per_identity: int  # upper bound on an identity's live rows: top-k identities lie in the top k·this rows
    codes: _Codes | None


class _Int8Kernel:
    """y = A·b for A (N, D) uint8 and b (D, Q) int8, via onnxruntime (one thread, like the float path)."""

    def __init__(self) -> None:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "int8_scan",
            [helper.make_tensor_value_info("A", TensorProto.UINT8, ["N", "D"]),
             helper.make_tensor_value_info("B", TensorProto.INT8, ["D", "Q"])],
            [helper.make_tensor_value_info("Y", TensorProto.INT32, ["N", "Q"])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        # x86 cores without VNNI multiply u8 × s8 pairs into saturating int16 (255·127·2 > 32767); there a
        # 7-bit query keeps every pair sum in range. Find out which holds here instead of guessing.
        self.levels = next((lv for lv in (127, 63) if self._exact_at(lv)), 0)

    def _exact_at(self, levels: int) -> bool:
        a = np.full((64, 64), 255, np.uint8)
        a[1::2] = 1
        b = np.full((64, 3), levels, np.int8)
        b[:, 1] = -levels
        b[::2, 2] = -levels
        return bool(np.array_equal(self(a, b), a.astype(np.int64) @ b.astype(np.int64)))

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._session.run(None, {"A": a, "B": b})[0]


@lru_cache(maxsize=1)
def int8_kernel() -> _Int8Kernel | None:
    """The onnxruntime int8 kernel, or None where onnxruntime is missing or its kernel is not exact."""
    try:
        kernel = _Int8Kernel()
    except ImportError:
        return None
    return kernel if kernel.levels else None


def _top(scores: np.ndarray, m: int) -> np.ndarray:
    """Indices of the m largest scores (unordered). Large arrays: the m-th largest block maximum is a lower
    bound on the m-th largest score, so only entries at or above it need the partition (≈5× faster than
    argpartition over a million rows)."""
    n = len(scores)
    if m >= n:
        return np.arange(n)
    if m == 1:
        return np.array([scores.argmax()])
    block = min(1024, n // (8 * m))  # ≥ 8m blocks, so the m-th block maximum is a tight bound
    if n < 16384 or block < 64:
        return np.argpartition(scores, n - m)[n - m:]
    cut = _mth_block_max(scores, m, block)
    cand = np.flatnonzero(scores >= cut)
    return cand[np.argpartition(scores[cand], len(cand) - m)[len(cand) - m:]]


def _mth_block_max(scores: np.ndarray, m: int, block: int) -> float | int:
    """A lower bound on the m-th largest score: m blocks have a maximum at least this large."""
    full = len(scores) - len(scores) % block
    maxima = scores[:full].reshape(-1, block).max(axis=1)
    if full < len(scores):
        maxima = np.append(maxima, scores[full:].max())
    return maxima[np.argpartition(maxima, len(maxima) - m)[len(maxima) - m]].item()


class Matcher:
    AUTO_INT8_ROWS = 65536  # int8=None keeps codes from here (the float32 scan takes ~1 ms at this size)
    INT8_MIN_ROWS = 16384  # below this even int8=True scans float32: sub-millisecond either way
    COMPACT_MIN = 1024  # dead rows tolerated before a rebuild (and a quarter of the rows)
    CHUNK_ELEMENTS = 1 << 23  # score-matrix elements per batched block (32 MiB of float32)

    def __init__(self, embedder: str | None = None, dim: int | None = None, aggregate: str = "max",
                 int8: bool | None = None, rerank: int = 32) -> None:
        if aggregate not in ("max", "mean"):
            raise StoreError(f"aggregate must be 'max' or 'mean', got {aggregate!r}")
        self.embedder = embedder
        self.aggregate = aggregate
        self.rerank = rerank
        self._int8 = int8
        self._dim = dim
        self._lock = threading.Lock()
        self._rows: dict[str, list[int]] = {}  # live rows per identity (writer state)
        self._slot: dict[str, int] = {}
        self._sums: dict[str, tuple[np.ndarray, int]] = {}  # aggregate="mean": Σ templates, count
        self._snap = self._empty(dim or 0)

    # -- following a store -------------------------------------------------------------------------------
    @classmethod
    def follow(cls, store: Store, embedder: str, **kwargs: Any) -> Matcher:
        """A matcher loaded from `store` and subscribed to its changes, with no change slipping in between."""
        matcher = cls(embedder=embedder, **kwargs)
        with store.locked():
            matcher.load((name, vec) for name, _, vec in store.templates(embedder))
            store.subscribe(matcher.on_change)
        return matcher

    def on_change(self, action: str, name: str, vectors: dict[str, np.ndarray]) -> None:
        """A store listener: apply one committed change if it concerns this matcher's embedder."""
        if self.embedder not in vectors:
            return
        if action == "enroll":
            self.add(name, vectors[self.embedder])
        elif action == "replace":
            self.replace(name, vectors[self.embedder])
        elif action == "delete":
            self.remove(name)

    # -- changes -----------------------------------------------------------------------------------------
    def add(self, name: str, vectors: np.ndarray) -> None:
        v = self._prepare(vectors)
        self._change([name] * len(v), v, replace=set())

    def replace(self, name: str, vectors: np.ndarray) -> None:
        """The identity's templates become exactly `vectors` (none: it is removed), in one step."""
        v = self._prepare(vectors)
        self._change([name] * len(v), v, replace={name})

    def remove(self, name: str) -> bool:
        with self._lock:
            known = name in self._rows
        if known:
            self._change([], np.zeros((0, self._dim or 0), np.float32), replace={name})
        return known

    def load(self, items: Iterable[tuple[str, np.ndarray]]) -> None:
        """Add many (name, vector) pairs at once: one snapshot, and no per-identity array work."""
        names: list[str] = []
        vecs: list[np.ndarray] = []
        for name, vec in items:
            names.append(name)
            vecs.append(np.asarray(vec, np.float32).reshape(1, -1))
        if names:
            self._change(names, self._prepare(np.concatenate(vecs)), replace=set())

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        v = np.asarray(vectors, dtype=np.float32)
        v = v.reshape(1, -1) if v.ndim == 1 else v
        if v.ndim != 2 or (self._dim is not None and len(v) and v.shape[1] != self._dim):
            raise StoreError(f"matcher holds {self._dim}-d vectors, got shape {np.shape(vectors)}")
        if not np.isfinite(v).all():
            raise StoreError("a template vector contains NaN or infinity")
        return l2_normalise(v).astype(np.float32)

    def _change(self, names: list[str], vecs: np.ndarray, replace: set[str]) -> None:
        """Remove the identities in `replace`, then add rows `vecs` labelled `names`; publish once."""
        with self._lock:
            snap = self._snap
            if self._dim is None and len(vecs):
                self._dim = vecs.shape[1]
                snap = self._empty(self._dim)
            dead: list[int] = []
            for name in replace:
                dead += self._rows.pop(name, [])
                self._slot.pop(name, None)
                self._sums.pop(name, None)
            if self.aggregate == "mean" and names:
                names, vecs = self._means(names, vecs, dead)
            dead_rows = np.concatenate([snap.dead, np.asarray(dead, np.int64)]) if dead else snap.dead
            if snap.n + len(vecs) > len(snap.vecs) or len(dead_rows) > max(self.COMPACT_MIN, snap.n // 4):
                snap = self._rebuild(snap, vecs)
                dead_rows = snap.dead
            self._snap = self._append(snap, vecs, names, dead_rows)

    def _means(self, names: list[str], vecs: np.ndarray, dead: list[int]) -> tuple[list[str], np.ndarray]:
        """aggregate="mean": fold the new templates into running sums; each touched identity gets a new
        mean row and its old one joins `dead`."""
        order = list(dict.fromkeys(names))
        index = {name: i for i, name in enumerate(order)}
        sums = np.zeros((len(order), vecs.shape[1]))
        np.add.at(sums, np.fromiter((index[n] for n in names), np.int64, len(names)), vecs)
        counts = np.bincount([index[n] for n in names], minlength=len(order))
        for i, name in enumerate(order):
            total, count = self._sums.get(name, (0.0, 0))
            self._sums[name] = (total + sums[i], count + int(counts[i]))
            sums[i] = self._sums[name][0] / self._sums[name][1]
            dead += self._rows.pop(name, [])
        return order, l2_normalise(sums).astype(np.float32)

    def _append(self, snap: _Snapshot, added: np.ndarray, names: list[str], dead: np.ndarray) -> _Snapshot:
        """Write rows past snap.n (no published snapshot reads there) and return the snapshot that shows them."""
        n, k = snap.n, len(added)
        slots = np.empty(k, np.int32)
        per = snap.per_identity  # only ever raised between rebuilds: an over-estimate costs a little, not exactness
        for i, name in enumerate(names):
            slot = self._slot.get(name)
            if slot is None:
                slot = self._slot[name] = len(snap.names)
                snap.names.append(name)
            slots[i] = slot
            rows = self._rows.setdefault(name, [])
            rows.append(n + i)
            per = max(per, len(rows))
        snap.vecs[n:n + k] = added
        snap.labels[n:n + k] = slots
        codes = snap.codes
        if codes is not None and k:
            q, norm, resid = _quantise(added, codes.scale)
            codes.data[n:n + k] = q
            codes = _Codes(codes.kernel, codes.data, codes.scale, max(codes.code_norm, norm),
                           max(codes.residual, resid))
        return _Snapshot(snap.vecs, snap.labels, snap.names, n + k, dead, per, codes)

    def _rebuild(self, snap: _Snapshot, incoming: np.ndarray) -> _Snapshot:
        """Fresh arrays holding only the live rows, with room to grow (and int8 scales fitted anew, over the
        live rows and the `incoming` ones about to be appended)."""
        rows_needed = sum(len(r) for r in self._rows.values()) + len(incoming)
        capacity = max(64, 2 * rows_needed)
        order = [r for rows in self._rows.values() for r in rows]
        vecs = np.empty((capacity, snap.vecs.shape[1]), np.float32)
        live = len(order)
        vecs[:live] = snap.vecs[np.asarray(order, np.int64)] if live else 0
        labels = np.empty(capacity, np.int32)
        names = list(self._rows)
        self._slot = {name: i for i, name in enumerate(names)}
        pos = 0
        for i, (name, rows) in enumerate(self._rows.items()):
            labels[pos:pos + len(rows)] = i
            self._rows[name] = list(range(pos, pos + len(rows)))
            pos += len(rows)
        codes = None
        kernel = int8_kernel() if self._int8 or (self._int8 is None and rows_needed >= self.AUTO_INT8_ROWS) \
            else None
        if kernel is not None:
            scale = _fit_scale([vecs[:live], incoming])
            data = np.empty((capacity, vecs.shape[1]), np.uint8)
            q, norm, resid = _quantise(vecs[:live], scale)
            data[:live] = q
            codes = _Codes(kernel, data, scale, norm, resid)
        per = max((len(r) for r in self._rows.values()), default=1)
        return _Snapshot(vecs, labels, names, live, np.zeros(0, np.int64), per, codes)

    @staticmethod
    def _empty(dim: int) -> _Snapshot:
        return _Snapshot(np.zeros((0, dim), np.float32), np.zeros(0, np.int32), [], 0,
                         np.zeros(0, np.int64), 1, None)

    # -- reads -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._rows)

    @property
    def identities(self) -> int:
        """Enrolled identities: the gallery size K that the 1:N threshold is computed for (several photos of one
        person are one candidate, and a photo enrolled twice must not make the threshold stricter)."""
        return len(self)

    @property
    def int8(self) -> bool:
        """Whether the gallery currently keeps int8 codes (and single queries scan them)."""
        return self._snap.codes is not None

    @property
    def rows(self) -> int:
        """Live rows: templates (aggregate="max") or identities (aggregate="mean")."""
        snap = self._snap
        return snap.n - len(snap.dead)

    def search(self, queries: np.ndarray, k: int = 1, exact: bool = True) -> list[list[Match]]:
        """Top-k identities per query, best first: one list per row of `queries` ((D,) counts as one row).

        Scores are cosine similarities, an identity's score being its best template ("max") or its mean
        template ("mean"). `exact=False` uses the int8 codes with float32 re-scoring of the best `rerank`
        candidates, when the matcher has them; otherwise every search is exact.
        """
        snap = self._snap  # one read: the whole search sees one consistent gallery
        q = np.atleast_2d(np.asarray(queries, np.float32))
        if q.shape[1] != snap.vecs.shape[1] and snap.n:
            raise StoreError(f"query has {q.shape[1]} dimensions, the gallery {snap.vecs.shape[1]}")
        live = snap.n - len(snap.dead)
        if live == 0 or k < 1:
            return [[] for _ in q]
        q = l2_normalise(q).astype(np.float32)
        m = min(k * (1 if self.aggregate == "mean" else snap.per_identity), live)
        use_codes = snap.codes is not None and snap.n >= self.INT8_MIN_ROWS
        if len(q) == 1 and use_codes:
            rows, scores = self._search_int8(snap, q[0], m, exact)
            return [self._aggregate(snap, rows, scores, k)]
        if use_codes and not exact:
            cand = self._candidates_int8_batch(snap, q, max(self.rerank, m))
            return [self._aggregate(snap, *self._rescore(snap, qi, c, m), k) for qi, c in zip(q, cand, strict=True)]
        return [self._aggregate(snap, r, s, k) for r, s in self._search_float(snap, q, m)]

    def _search_float(self, snap: _Snapshot, q: np.ndarray, m: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Exact top-m rows per query; the gallery is read in blocks so the score matrix stays small."""
        n = snap.n
        if len(q) == 1:
            s = snap.vecs[:n] @ q[0]
            s[snap.dead] = -np.inf
            top = _top(s, m)
            return [(top, s[top])]
        step = max(m, self.CHUNK_ELEMENTS // len(q))
        best_rows = np.zeros((len(q), 0), np.int64)
        best = np.zeros((len(q), 0), np.float32)
        for start in range(0, n, step):
            s = q @ snap.vecs[start:min(n, start + step)].T
            dead = snap.dead[(snap.dead >= start) & (snap.dead < start + s.shape[1])]
            s[:, dead - start] = -np.inf
            if s.shape[1] > m:
                idx = np.argpartition(s, s.shape[1] - m, axis=1)[:, -m:]
                s = np.take_along_axis(s, idx, axis=1)
            else:
                idx = np.broadcast_to(np.arange(s.shape[1]), s.shape)
            rows = np.concatenate([best_rows, idx + start], axis=1)
            vals = np.concatenate([best, s], axis=1)
            keep = np.argpartition(vals, vals.shape[1] - m, axis=1)[:, -m:] if vals.shape[1] > m else None
            best_rows = rows if keep is None else np.take_along_axis(rows, keep, axis=1)
            best = vals if keep is None else np.take_along_axis(vals, keep, axis=1)
        return list(zip(best_rows, best, strict=True))

    def _quantise_query(self, snap: _Snapshot, q: np.ndarray) -> tuple[np.ndarray, float, float]:
        """(int8 query, its step a, bound B): |q·x − a·(code-dot)| ≤ B for every row x of the gallery."""
        assert snap.codes is not None
        u = q.astype(np.float64) * snap.codes.scale
        levels = snap.codes.kernel.levels
        a = max(float(np.abs(u).max()), 1e-30) / levels
        v = np.clip(np.rint(u / a), -levels, levels)
        # q·x = u·code + q·residual = a·(v·code) + w·code + q·residual, with w = u − a·v and ‖q‖ = 1.
        bound = float(np.linalg.norm(u - a * v)) * snap.codes.code_norm + snap.codes.residual + 1e-5
        return v.astype(np.int8).reshape(-1, 1), a, bound

    def _scan_int8(self, snap: _Snapshot, qv: np.ndarray) -> np.ndarray:
        """Integer scores (up to a per-query constant, from the +128 offset) of every row; dead rows lowest."""
        assert snap.codes is not None
        y = snap.codes.kernel(snap.codes.data[:snap.n], qv)
        y = y.reshape(snap.n, -1)
        y[snap.dead] = INT32_MIN
        return y

    def _search_int8(self, snap: _Snapshot, q: np.ndarray, m: int, exact: bool) -> tuple[np.ndarray, np.ndarray]:
        qv, a, bound = self._quantise_query(snap, q)
        y = self._scan_int8(snap, qv)[:, 0]
        if not exact:
            cand = _top(y, min(max(self.rerank, m), len(y)))
            return self._rescore(snap, q, cand[y[cand] > INT32_MIN], m)
        # Every true top-m row scores ≥ (m-th best lower bound) ≥ (m-th best approx) − B, so its approximate
        # score is ≥ (m-th best approx) − 2B: that set holds them all.
        if m == 1:
            cut = int(y.max())
        elif len(y) >= 8 * m * 1024:
            cut = int(_mth_block_max(y, m, 1024))
        else:
            cut = int(np.partition(y, len(y) - m)[len(y) - m])
        floor = max(cut - int(np.ceil(2 * bound / a)) - 1, INT32_MIN + 1)  # dead rows sit at INT32_MIN
        cand = np.flatnonzero(y >= floor)
        if len(cand) > max(4096, snap.n // 8):  # the bound prunes too little here: scanning floats is cheaper
            return self._search_float(snap, q[None], m)[0]
        return self._rescore(snap, q, cand, m)

    def _candidates_int8_batch(self, snap: _Snapshot, q: np.ndarray, r: int) -> list[np.ndarray]:
        assert snap.codes is not None
        qv = np.concatenate([self._quantise_query(snap, qi)[0] for qi in q], axis=1)
        step = max(r, self.CHUNK_ELEMENTS // len(q))
        found: list[list[np.ndarray]] = [[] for _ in q]
        best: list[list[np.ndarray]] = [[] for _ in q]
        for start in range(0, snap.n, step):
            stop = min(snap.n, start + step)
            y = snap.codes.kernel(snap.codes.data[start:stop], qv)
            dead = snap.dead[(snap.dead >= start) & (snap.dead < stop)]
            y[dead - start] = INT32_MIN
            y = np.ascontiguousarray(y.T)
            idx = np.argpartition(y, y.shape[1] - r, axis=1)[:, -r:] if y.shape[1] > r else \
                np.broadcast_to(np.arange(y.shape[1]), y.shape)
            vals = np.take_along_axis(y, idx, axis=1)
            for i in range(len(q)):
                found[i].append(idx[i] + start)
                best[i].append(vals[i])
        out = []
        for rows, vals in zip(found, best, strict=True):
            rows_all, vals_all = np.concatenate(rows), np.concatenate(vals)
            top = _top(vals_all, min(r, len(vals_all)))
            out.append(rows_all[top[vals_all[top] > INT32_MIN]])
        return out

    @staticmethod
    def _rescore(snap: _Snapshot, q: np.ndarray, cand: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact float32 scores of the (live) candidate rows; the best m of them."""
        s = snap.vecs[cand] @ q
        top = _top(s, min(m, len(s)))
        return cand[top], s[top]

    def _aggregate(self, snap: _Snapshot, rows: np.ndarray, scores: np.ndarray, k: int) -> list[Match]:
        out: list[Match] = []
        seen: set[int] = set()
        for i in np.argsort(-scores, kind="stable"):
            if not np.isfinite(scores[i]):
                break
            slot = int(snap.labels[rows[i]])
            if slot not in seen:
                seen.add(slot)
                out.append(Match(snap.names[slot], float(scores[i])))
                if len(out) == k:
                    break
        return out


def _fit_scale(parts: list[np.ndarray]) -> np.ndarray:
    """Per-dimension step: the largest magnitude seen (at least 3/√D, so that a small first batch does not
    make every later row clip) over 127 levels."""
    dim = parts[0].shape[1]
    peak = np.full(dim, 3.0 / np.sqrt(dim))
    for part in parts:
        if len(part):
            peak = np.maximum(peak, np.abs(part).max(axis=0))
    return (peak / 127.0).astype(np.float32).astype(np.float64)  # the exact steps _quantise uses


def _quantise(vecs: np.ndarray, scale: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, float, float]:
    """(uint8 codes (code + 128), max ‖code‖, max ‖residual‖) of these rows, in chunks so a million rows
    need no gigabyte temporaries. Clipping only grows the residual, which the search bound accounts for."""
    out = np.empty(vecs.shape, np.uint8)
    step = scale.astype(np.float32)
    norm = resid = 0.0
    for start in range(0, len(vecs), chunk):
        x = vecs[start:start + chunk]
        codes = np.clip(np.rint(x / step), -127, 127)
        resid = max(resid, float(np.linalg.norm(x - codes * step, axis=1).max()))
        norm = max(norm, float(np.linalg.norm(codes, axis=1).max()))
        out[start:start + chunk] = codes + 128
    return out, norm, resid
