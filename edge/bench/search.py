"""`facegate bench search`: the matcher against faiss-cpu on one thread, at several gallery sizes.

Gallery: the real embeddings given (every row its own identity, so matcher and faiss answer the same
question), padded to N with random unit vectors. Queries: real embeddings perturbed slightly, so each has a
meaningful nearest row. Each N reports single-query p50/p99 (backends interleaved query by query, so a
change in machine load hits all of them alike), batched throughput, and top-1 agreement with exact search.
faiss is optional: without it only the matcher's paths are measured.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edge.store.matcher import Matcher, int8_kernel

BACKENDS = {
    "matcher_float": "edge Matcher(int8=False), exact: numpy float32 matrix × query (OpenBLAS sgemv; sgemm in "
                     "gallery blocks for batches)",
    "matcher_int8_exact": "edge Matcher(int8=True), exact=True: onnxruntime MatMulInteger over int8 codes, then "
                          "float32 re-scoring of every row the quantisation error bound cannot rule out (results "
                          "identical to exact search); a float32 scan below INT8_MIN_ROWS rows and for batches",
    "matcher_int8_compressed": "edge Matcher(int8=True), exact=False: onnxruntime MatMulInteger over int8 codes, "
                               "float32 re-ranking of the best 32",
    "faiss_flat": "faiss IndexFlatIP (float32, exact)",
    "faiss_sq8": "faiss IndexScalarQuantizer(QT_8bit, METRIC_INNER_PRODUCT), trained on the gallery",
}
PERTURB = 0.35  # norm of the noise added to a unit real embedding: cosine ≈ 0.94 to its source


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _padded(real: np.ndarray, n: int, rng: np.random.Generator, chunk: int = 1 << 16) -> np.ndarray:
    out = np.empty((n, real.shape[1]), np.float32)
    keep = min(n, len(real))
    out[:keep] = real[:keep]
    for start in range(keep, n, chunk):  # in chunks: no float64 temporaries the size of the gallery
        block = out[start:min(n, start + chunk)]
        block[:] = rng.standard_normal(block.shape, dtype=np.float32)
        _unit(block)
    return out


def _limit_threads() -> tuple[contextlib.AbstractContextManager[Any], str]:
    """One BLAS/OpenMP thread for numpy (threadpoolctl), else the environment (effective only if numpy
    was not loaded yet)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")
        return contextlib.nullcontext(), "environment variables (install threadpoolctl to be sure)"
    return threadpool_limits(limits=1), "threadpoolctl: 1"


def _faiss_indexes(x: np.ndarray) -> dict[str, Any]:
    try:
        import faiss
    except ImportError:
        return {}
    faiss.omp_set_num_threads(1)
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    sq = faiss.IndexScalarQuantizer(x.shape[1], faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sq.train(x)
    sq.add(x)
    return {"faiss_flat": flat, "faiss_sq8": sq}


def _top1_functions(matchers: dict[str, Matcher], indexes: dict[str, Any], k: int
                    ) -> dict[str, Callable[[np.ndarray], list[int]]]:
    """backend → (queries (Q, D) → top-1 row per query); the same call serves one query or a batch."""
    def matcher(m: Matcher, exact: bool) -> Callable[[np.ndarray], list[int]]:
        return lambda q: [int(r[0].name) if r else -1 for r in m.search(q, k, exact=exact)]

    def index(ix: Any) -> Callable[[np.ndarray], list[int]]:
        return lambda q: [int(i) for i in ix.search(q, k)[1][:, 0]]

    fns = {"matcher_float": matcher(matchers["float"], True),
           "matcher_int8_exact": matcher(matchers["int8"], True)}
    if matchers["int8"].int8:
        fns["matcher_int8_compressed"] = matcher(matchers["int8"], False)
    fns.update({name: index(ix) for name, ix in indexes.items()})
    return fns


def _one_size(x: np.ndarray, q: np.ndarray, source: np.ndarray, k: int, batch: int) -> dict[str, Any]:
    n = len(x)
    t = time.perf_counter()
    names = [str(i) for i in range(n)]
    matchers = {"float": Matcher(dim=x.shape[1], int8=False), "int8": Matcher(dim=x.shape[1], int8=True)}
    for m in matchers.values():
        m.load(zip(names, x, strict=True))
    indexes = _faiss_indexes(x)
    build_s = time.perf_counter() - t
    fns = _top1_functions(matchers, indexes, k)
    order = list(fns)

    for name in order:  # warm up: first-call allocations, ORT session, page faults
        for qi in q[:3]:
            fns[name](qi[None])
    times: dict[str, list[float]] = {name: [] for name in order}
    top1: dict[str, list[int]] = {name: [] for name in order}
    for i, qi in enumerate(q):
        one = qi[None]
        for name in order[i % len(order):] + order[:i % len(order)]:  # rotate who goes first
            start = time.perf_counter()
            got = fns[name](one)
            times[name].append((time.perf_counter() - start) * 1e3)
            top1[name].append(got[0])

    qps: dict[str, float] = {}
    b = q[:batch]
    for name in order:
        fns[name](b[:8])
        best = np.inf
        for _ in range(2):
            start = time.perf_counter()
            fns[name](b)
            best = min(best, time.perf_counter() - start)
        qps[name] = round(len(b) / best, 1)

    truth = np.asarray(top1["matcher_float"])
    int8_path = "int8 (onnxruntime)" if matchers["int8"].int8 and n >= Matcher.INT8_MIN_ROWS else "float32 (numpy)"
    out: dict[str, Any] = {
        "n": n,
        "build_s": round(build_s, 1),
        "single_query_ms": {name: {"p50": round(float(np.percentile(v, 50)), 3),
                                   "p99": round(float(np.percentile(v, 99)), 3)} for name, v in times.items()},
        "batch_qps": qps,
        "top1_agreement_with_exact": {name: round(float(np.mean(np.asarray(v) == truth)), 5)
                                      for name, v in top1.items()},
        "top1_is_source_row": {name: round(float(np.mean(np.asarray(v) == source)), 5) for name, v in top1.items()},
        "matcher_int8_single_query_path": int8_path,
        "matcher_default_path": "int8 exact" if n >= Matcher.AUTO_INT8_ROWS and matchers["int8"].int8
        else "float32",
    }
    p50 = {name: v["p50"] for name, v in out["single_query_ms"].items()}
    if "faiss_flat" in p50:
        out["targets"] = {
            "exact_p50_over_faiss_flat": {name: round(p50[name] / p50["faiss_flat"], 3)
                                          for name in ("matcher_float", "matcher_int8_exact")},
        }
        if "matcher_int8_compressed" in p50:
            out["targets"]["compressed_p50_over_faiss_sq8"] = round(
                p50["matcher_int8_compressed"] / p50["faiss_sq8"], 3)
    return out


def run(n_values: list[int], dim: int, real: np.ndarray | None, queries: int, seed: int, *, k: int = 1,
        batch: int = 256) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    if real is None:
        real = _unit(rng.standard_normal((max(queries, 1000), dim), dtype=np.float32))
        real_kind = "random unit vectors"
    else:
        real = _unit(np.asarray(real, np.float32).reshape(len(real), -1).copy())
        real_kind = "real embeddings"
        if real.shape[1] != dim:
            raise ValueError(f"real embeddings are {real.shape[1]}-d, dim is {dim}")
    limiter, threads = _limit_threads()
    results = []
    with limiter:
        full = _padded(real, max(n_values), rng)
        for n in sorted(n_values):
            source = rng.integers(0, min(n, len(real)), queries)
            noise = _unit(rng.standard_normal((queries, dim), dtype=np.float32)) * PERTURB
            q = _unit(full[source] + noise)
            results.append(_one_size(full[:n], q, source, k, batch))
    versions = {"numpy": np.__version__}
    for mod in ("faiss", "onnxruntime"):
        with contextlib.suppress(ImportError):
            versions[mod] = __import__(mod).__version__
    kernel = int8_kernel()
    peak_mib = None
    with contextlib.suppress(ImportError):
        import resource

        peak_mib = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB
    return {
        "dim": dim,
        "queries": queries,
        "batch": batch,
        "k": k,
        "seed": seed,
        "real_rows": len(real),
        "real_kind": real_kind,
        "perturbation_norm": PERTURB,
        "threads": {"numpy_blas": threads, "faiss_omp": 1, "onnxruntime_intra_op": 1},
        "int8_query_levels": kernel.levels if kernel else None,
        "cpu_count": os.cpu_count(),
        "peak_rss_mib": peak_mib,
        "versions": versions,
        "backends": {name: text for name, text in BACKENDS.items()
                     if "faiss" not in name or "faiss" in versions},
        "results": results,
    }
