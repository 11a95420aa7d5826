"""`facegate train verifier`: a logistic verification head over pair features of one or more embedders.

ŷ = σ(Σ_k w_k |f(x_i)_k − f(x_j)_k| + b), optionally with the element-wise product, a χ²-style term and each
embedder's cosine as extra features; with two embedders (SFace + dlib) it is a fusion head. Training is
L2-regularised logistic regression by Newton's method on standardised features: deterministic, exact, and a
fraction of a second for a few thousand pairs, so the LFW protocol's ten trainings are cheap.

Evaluation (`cross_validate_head`) follows the LFW View-2 protocol: for each fold the head is trained on the
other nine folds' pairs only, its threshold chosen on those nine folds, and the held-out fold scored. View 1
(DevTrain → DevTest) is for choosing features and regularisation; the View-2 test folds never are.

The exported head (ONNX, task "verify_head") folds standardisation and cosines into three weight vectors over
the embedders' concatenated vectors (see edge/verifier.py), so device and trainer compute the same logit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import FacegateError
from edge.eval.lfw import Pair, accuracy_at, best_threshold, pair_identities
from edge.models.registry import Registry
from edge.verifier import BIAS_NAME, CHI2_EPS, WEIGHT_NAMES, VerifierHead, sigmoid
from export.train.data import embeddings

FEATURES = ("abs", "prod", "chi2", "cos")
DEFAULT_FEATURES = ("abs", "prod", "cos")


@dataclass(frozen=True)
class HeadSettings:
    features: tuple[str, ...] = DEFAULT_FEATURES
    l2: float = 100.0  # penalty on the standardised element-wise weights (λ/2·‖w‖², summed loss)
    l2_cos: float = 1.0  # penalty on the cosine features' weights: a few strong features need little shrinkage
    extra_pairs: int = 0  # extra training pairs per class drawn from the training identities' images
    threshold: str = "train"  # "train": best accuracy on the training pairs; "half": logit 0 (p = 0.5)

    def __post_init__(self) -> None:
        bad = [f for f in self.features if f not in FEATURES]
        if bad or not self.features:
            raise FacegateError(f"unknown feature(s) {bad} (choose from {', '.join(FEATURES)})")
        if self.threshold not in ("train", "half"):
            raise FacegateError("threshold must be 'train' or 'half'")


# -- features ------------------------------------------------------------------------------------------------------
def pair_features(a: np.ndarray, b: np.ndarray, dims: Sequence[int], features: Sequence[str]) -> np.ndarray:
    """(N, sum D) × (N, sum D) concatenated embeddings → (N, F) features, blocks in FEATURES order."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cols = []
    if "abs" in features:
        cols.append(np.abs(a - b))
    if "prod" in features:
        cols.append(a * b)
    if "chi2" in features:
        cols.append((a - b) ** 2 / (np.abs(a) + np.abs(b) + CHI2_EPS))
    if "cos" in features:
        edges = np.cumsum([0, *dims])
        cols.append(np.stack([(a[:, s:e] * b[:, s:e]).sum(1) for s, e in zip(edges[:-1], edges[1:], strict=True)], 1))
    return np.concatenate(cols, axis=1)


def pair_arrays(pairs: Sequence[Pair], vectors: Mapping[str, Mapping[str, np.ndarray]], embedders: Sequence[str]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, scored) concatenated embeddings per pair; `scored` is false where an image had no face."""
    dims = [len(next(iter(vectors[e].values()))) for e in embedders]
    n = len(pairs)
    a = np.zeros((n, sum(dims)))
    b = np.zeros((n, sum(dims)))
    ok = np.ones(n, bool)
    for k, p in enumerate(pairs):
        try:
            a[k] = np.concatenate([vectors[e][p.a] for e in embedders])
            b[k] = np.concatenate([vectors[e][p.b] for e in embedders])
        except KeyError:
            ok[k] = False
    return a, b, ok


# -- logistic regression -------------------------------------------------------------------------------------------
@dataclass
class LogisticModel:
    """Weights on standardised features: logit = ((x − mean) / scale) · w + b."""

    mean: np.ndarray
    scale: np.ndarray
    w: np.ndarray
    b: float
    iterations: int = 0

    def logit(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.w + self.b


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float | np.ndarray = 1.0, iterations: int = 50,
                 tol: float = 1e-8) -> LogisticModel:
    """L2-regularised logistic regression by Newton's method; `l2` is one penalty or one per feature (the bias
    is not penalised)."""
    mean = x.mean(0)
    scale = x.std(0)
    scale[scale < 1e-12] = 1.0
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    y = np.asarray(y, np.float64)
    theta = np.zeros(z.shape[1])
    penalty = np.zeros(z.shape[1])
    penalty[:-1] = l2
    it = 0
    for it in range(1, iterations + 1):  # noqa: B007 (the count is reported)
        p = sigmoid(z @ theta)
        grad = z.T @ (p - y) + penalty * theta
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if float(np.abs(step).max()) < tol:
            break
    return LogisticModel(mean, scale, theta[:-1], float(theta[-1]), it)


# -- a trained head ------------------------------------------------------------------------------------------------
@dataclass
class TrainedHead:
    embedders: tuple[str, ...]
    dims: tuple[int, ...]
    settings: HeadSettings
    model: LogisticModel
    threshold: float  # on the logit
    provenance: dict[str, Any] = field(default_factory=dict)

    def features(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return pair_features(a, b, self.dims, self.settings.features)

    def logit(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.model.logit(self.features(a, b))

    def folded(self) -> VerifierHead:
        """The device form: standardisation and cosines folded into per-element weight blocks."""
        d = int(sum(self.dims))
        w = self.model.w / self.model.scale
        bias = self.model.b - float((self.model.w * self.model.mean / self.model.scale).sum())
        blocks: dict[str, np.ndarray] = {}
        at = 0
        for f in ("abs", "prod", "chi2"):
            if f in self.settings.features:
                blocks[f] = w[at:at + d].copy()
                at += d
        if "cos" in self.settings.features:
            # An embedder's cosine is the sum of its slice of a ⊙ b (unit vectors): fold it into the product block.
            prod = blocks.setdefault("prod", np.zeros(d))
            edges = np.cumsum([0, *self.dims])
            for k, (s, e) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
                prod[s:e] += w[at + k]
        return VerifierHead(embedders=self.embedders, dims=self.dims, weights=blocks, bias=bias)


def train_head(a: np.ndarray, b: np.ndarray, same: np.ndarray, embedders: Sequence[str], dims: Sequence[int],
               settings: HeadSettings = HeadSettings()) -> TrainedHead:
    """Fit the head on labelled pairs (both orders of each pair: the head must be symmetric in practice)."""
    x = pair_features(a, b, dims, settings.features)  # every feature is symmetric in (a, b) already
    penalty = np.full(x.shape[1], settings.l2)
    if "cos" in settings.features:
        penalty[-len(dims):] = settings.l2_cos  # the cosine block comes last
    model = fit_logistic(x, same.astype(float), l2=penalty)
    logits = model.logit(x)
    t = best_threshold(logits, same.astype(bool)) if settings.threshold == "train" else 0.0
    return TrainedHead(tuple(embedders), tuple(int(d) for d in dims), settings, model, float(t))


# -- data ----------------------------------------------------------------------------------------------------------
def load_vectors(images: Path, rels: Sequence[str], embedders: Sequence[str], cache_dir: Path | None = None,
                 registry: Registry | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{embedder: {rel: unit vector}} from the embedding caches (computed on first use)."""
    return {e: embeddings(images, list(rels), e, cache_dir=cache_dir, registry=registry) for e in embedders}


def pairs_rels(pairs: Sequence[Pair]) -> list[str]:
    return sorted({p.a for p in pairs} | {p.b for p in pairs})


def sample_pairs(rels: Sequence[str], n: int, rng: np.random.Generator) -> list[Pair]:
    """`n` matched and `n` mismatched pairs drawn from these images (identity = the path's folder).

    Identities are drawn uniformly, not images, so the few people with hundreds of photos do not dominate.
    """
    by_id: dict[str, list[str]] = {}
    for r in sorted(rels):
        by_id.setdefault(r.split("/")[0], []).append(r)
    ids = sorted(by_id)
    multi = [i for i in ids if len(by_id[i]) >= 2]
    if n <= 0 or not multi or len(ids) < 2:
        return []
    out = []
    for _ in range(n):
        person = by_id[multi[int(rng.integers(len(multi)))]]
        i, j = rng.choice(len(person), 2, replace=False)
        out.append(Pair(person[i], person[j], True, -1))
    for _ in range(n):
        x, y = rng.choice(len(ids), 2, replace=False)
        px, py = by_id[ids[x]], by_id[ids[y]]
        out.append(Pair(px[int(rng.integers(len(px)))], py[int(rng.integers(len(py)))], False, -1))
    return out


def with_extra_pairs(pairs: Sequence[Pair], vectors: Mapping[str, Mapping[str, np.ndarray]],
                     embedders: Sequence[str], n: int, seed: int = 0) -> list[Pair]:
    """`pairs` plus `n` + `n` pairs sampled from every image of the identities `pairs` names (training data
    only: these identities are the training side of a split, so the test side stays unseen)."""
    if n <= 0:
        return list(pairs)
    ids = pair_identities(pairs)
    pool = [r for r in vectors[embedders[0]] if r.split("/")[0] in ids and all(r in vectors[e] for e in embedders)]
    return [*pairs, *sample_pairs(pool, n, np.random.default_rng(seed))]


# -- the LFW protocol ----------------------------------------------------------------------------------------------
def cross_validate_head(pairs: Sequence[Pair], vectors: Mapping[str, Mapping[str, np.ndarray]],
                        embedders: Sequence[str], settings: HeadSettings = HeadSettings()) -> dict[str, Any]:
    """View 2: per fold, a head trained on the other folds' pairs, threshold from those, accuracy on this fold."""
    a, b, ok = pair_arrays(pairs, vectors, embedders)
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    accs, thresholds, logits = [], [], np.full(len(pairs), np.nan)
    for f in np.unique(folds):
        train = (folds != f) & ok
        test = folds == f
        head = fit_on(np.asarray(pairs, object)[train].tolist(), vectors, embedders, settings, seed=int(f))
        s = np.full(int(test.sum()), np.nan)  # unscored (no face) pairs count as wrong, as in bench pairs
        s[ok[test]] = head.logit(a[test & ok], b[test & ok])
        logits[test] = s
        thresholds.append(head.threshold)
        accs.append(accuracy_at(s, same[test], head.threshold))
    return summary(accs) | {"fold_accuracy": [round(x, 4) for x in accs],
                            "fold_thresholds": [round(x, 4) for x in thresholds],
                            "unscored_pairs": int((~ok).sum()), "logits": logits}


def fit_on(pairs: Sequence[Pair], vectors: Mapping[str, Mapping[str, np.ndarray]], embedders: Sequence[str],
           settings: HeadSettings, seed: int = 0) -> TrainedHead:
    """A head trained on these pairs (plus the settings' extra pairs from the same identities)."""
    train = with_extra_pairs(pairs, vectors, embedders, settings.extra_pairs, seed)
    a, b, ok = pair_arrays(train, vectors, embedders)
    same = np.array([p.same for p in train])
    dims = [len(next(iter(vectors[e].values()))) for e in embedders]
    return train_head(a[ok], b[ok], same[ok], embedders, dims, settings)


def summary(accs: Sequence[float]) -> dict[str, Any]:
    n = len(accs)
    std = float(np.std(accs, ddof=1)) if n > 1 else 0.0
    # Rounded to 10 places: fold accuracies are k/600, and float summation noise (0.99599999… for 24 errors in
    # 6,000) must not read as a different count of errors.
    return {"accuracy": round(float(np.mean(accs)), 10), "accuracy_std": std,
            "accuracy_sem": std / np.sqrt(n) if n else 0.0,
            "folds": n}


def dev_accuracy(train_pairs: Sequence[Pair], test_pairs: Sequence[Pair],
                 vectors: Mapping[str, Mapping[str, np.ndarray]], embedders: Sequence[str],
                 settings: HeadSettings) -> float:
    """View 1: train on DevTrain, threshold from DevTrain, accuracy on DevTest."""
    head = fit_on(train_pairs, vectors, embedders, settings)
    ta, tb, tok = pair_arrays(test_pairs, vectors, embedders)
    s = np.full(len(test_pairs), np.nan)
    s[tok] = head.logit(ta[tok], tb[tok])
    return accuracy_at(s, np.array([p.same for p in test_pairs]), head.threshold)


def default_grid(extra_pairs: int = 20000) -> list[HeadSettings]:
    """The settings `--tune` compares on View 1, simplest first (ties go to the earlier one)."""
    grid = [HeadSettings(features=("cos",), l2=1.0, extra_pairs=0)]
    for feats in (("abs", "cos"), ("abs", "prod", "cos")):
        for l2 in (100.0, 300.0, 1000.0, 3000.0):
            grid += [HeadSettings(features=feats, l2=l2, extra_pairs=n) for n in dict.fromkeys((0, extra_pairs))]
    return grid


def view1_accuracy(dev_train: Sequence[Pair], dev_test: Sequence[Pair],
                   vectors: Mapping[str, Mapping[str, np.ndarray]], embedders: Sequence[str],
                   settings: HeadSettings) -> float:
    """View 1 both ways (DevTrain → DevTest and DevTest → DevTrain, identity-disjoint), pooled over the 3,200
    test pairs: DevTest alone (1,000 pairs) cannot tell settings 0.2 pp apart."""
    n1, n2 = len(dev_test), len(dev_train)
    a1 = dev_accuracy(dev_train, dev_test, vectors, embedders, settings)
    a2 = dev_accuracy(dev_test, dev_train, vectors, embedders, settings)
    return (a1 * n1 + a2 * n2) / (n1 + n2)


def tune(dev_train: Sequence[Pair], dev_test: Sequence[Pair], vectors: Mapping[str, Mapping[str, np.ndarray]],
         embedders: Sequence[str], grid: Sequence[HeadSettings]) -> tuple[HeadSettings, list[dict[str, Any]]]:
    """Pick settings on View 1 only; ties go to the earlier (simpler) entry of the grid."""
    rows = [asdict(s) | {"view1_accuracy": view1_accuracy(dev_train, dev_test, vectors, embedders, s)} for s in grid]
    best = max(range(len(rows)), key=lambda k: (round(rows[k]["view1_accuracy"], 6), -k))
    return grid[best], rows


def cosine_cross_validate(pairs: Sequence[Pair], vectors: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The plain cosine baseline of one embedder under the same protocol (what bench pairs reports)."""
    from edge.eval.lfw import cross_validate, pair_scores

    scores = pair_scores(list(pairs), dict(vectors))
    accs, _ = cross_validate(scores, np.array([p.same for p in pairs]), np.array([p.fold for p in pairs]))
    return summary(accs)


# -- export --------------------------------------------------------------------------------------------------------
def head_onnx(head: VerifierHead, path: Path, opset: int = 18) -> Path:
    """The head as an ONNX graph: inputs a, b (N, sum D) float32 → outputs probability (N,), logit (N,)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = head.dim
    nodes = [helper.make_node("Sub", ["a", "b"], ["diff"])]
    inits = [numpy_helper.from_array(np.array([head.bias], np.float32), BIAS_NAME)]
    terms = []
    for block, w in head.weights.items():
        name = WEIGHT_NAMES[block]
        inits.append(numpy_helper.from_array(w.astype(np.float32).reshape(d, 1), name))
        if block == "abs":
            nodes.append(helper.make_node("Abs", ["diff"], ["f_abs"]))
        elif block == "prod":
            nodes.append(helper.make_node("Mul", ["a", "b"], ["f_prod"]))
        else:  # chi2: (a − b)² / (|a| + |b| + ε)
            inits.append(numpy_helper.from_array(np.array([CHI2_EPS], np.float32), "chi2_eps"))
            nodes += [helper.make_node("Mul", ["diff", "diff"], ["sq"]),
                      helper.make_node("Abs", ["a"], ["abs_a"]), helper.make_node("Abs", ["b"], ["abs_b"]),
                      helper.make_node("Add", ["abs_a", "abs_b"], ["den0"]),
                      helper.make_node("Add", ["den0", "chi2_eps"], ["den"]),
                      helper.make_node("Div", ["sq", "den"], ["f_chi2"])]
        nodes.append(helper.make_node("MatMul", [f"f_{block}", name], [f"t_{block}"]))
        terms.append(f"t_{block}")
    acc = terms[0]
    for k, t in enumerate(terms[1:]):
        nodes.append(helper.make_node("Add", [acc, t], [f"sum{k}"]))
        acc = f"sum{k}"
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "squeeze_axis"))
    nodes += [helper.make_node("Add", [acc, BIAS_NAME], ["logit2d"]),
              helper.make_node("Squeeze", ["logit2d", "squeeze_axis"], ["logit"]),
              helper.make_node("Sigmoid", ["logit"], ["probability"])]
    graph = helper.make_graph(
        nodes, "facegate_verify_head",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", d]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", d])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="facegate")
    model.ir_version = 9  # readable by onnxruntime ≥ 1.17, the device floor
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def head_parity(path: Path, head: VerifierHead, trained: TrainedHead, a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """The ONNX file through onnxruntime vs the trainer's own logits and the numpy scorer, on real pairs."""
    from edge.runtime.onnx import OnnxRuntime

    rt = OnnxRuntime(Path(path))
    prob, logit = rt.run({"a": a.astype(np.float32), "b": b.astype(np.float32)})
    ref = trained.logit(a, b)
    folded = head.logit_concat(a, b)
    onnx_head = VerifierHead.from_onnx(Path(path), embedders=head.embedders, dims=head.dims)
    return {"reference": "the trainer's logistic model on standardised features", "crops": len(a), "pairs": len(a),
            "max_abs_logit_diff_onnx": float(np.abs(logit - ref).max()),
            "max_abs_logit_diff_numpy": float(np.abs(folded - ref).max()),
            "max_abs_logit_diff_numpy_from_onnx": float(np.abs(onnx_head.logit_concat(a, b) - ref).max()),
            "max_abs_prob_diff_onnx": float(np.abs(prob - sigmoid(ref)).max()),
            "verdict_mismatches": int(((logit >= trained.threshold) != (ref >= trained.threshold)).sum())}


def logit_thresholds(head: VerifierHead, vectors: Mapping[str, Mapping[str, np.ndarray]], pairs: Sequence[Pair],
                     pairs_file: Path, far: float, fpir: float) -> dict[str, Any]:
    """verify (1:1 at `far`) and identify (impostor tail) thresholds on the head's logit, from every
    cross-identity pair of the images `pairs` names (calibration identities must be disjoint from training)."""
    from edge.eval.calibrate import impostor_tail
    from edge.eval.lfw import threshold_at_far

    rels = [r for r in pairs_rels(pairs) if all(r in vectors[e] for e in head.embedders)]
    x = np.stack([np.concatenate([vectors[e][r] for e in head.embedders]) for r in rels])
    ids = np.array([r.split("/")[0] for r in rels])
    out = []
    for s in range(0, len(rels), 256):
        m = head.logit_matrix(x[s:s + 256], x)
        rows = np.arange(s, min(s + 256, len(rels)))
        keep = (np.arange(len(rels))[None, :] > rows[:, None]) & (ids[rows][:, None] != ids[None, :])
        out.append(m[keep])
    impostor = np.concatenate(out)
    a, b, ok = pair_arrays(pairs, vectors, head.embedders)
    same = np.array([p.same for p in pairs])
    genuine = head.logit_concat(a[ok & same], b[ok & same])
    t = threshold_at_far(impostor, far)
    digest = hashlib.sha256(Path(pairs_file).read_bytes()).hexdigest()
    prov = {"pairs_file": Path(pairs_file).name, "pairs_sha256": digest,
            "impostor_pairs": len(impostor), "impostor_source": "all cross-identity pairs of the images the pairs "
            "file names", "genuine_pairs": len(genuine), "far_target": far,
            "far_measured": round(float((impostor >= t).mean()), 6),
            "frr_measured": round(float((genuine < t).mean()), 6), "date": dt.date.today().isoformat()}
    return {"verify": {"value": round(t, 6), "metric": "logit", "provenance": prov},
            "identify": {"value": round(threshold_at_far(impostor, fpir), 6), "metric": "logit",
                         "provenance": {**prov, "fpir_target": fpir}, "tail": impostor_tail(impostor)}}


def export_head(out: Path, name: str, trained: TrainedHead, vectors: Mapping[str, Mapping[str, np.ndarray]],
                parity_pairs: Sequence[Pair], thresholds: dict[str, Any] | None = None,
                registry: Registry | None = None) -> Path:
    """Write the head's bundle (model.onnx, manifest.json, parity.json) into `out/<name>/`."""
    from export.bundle import check_targets, write_bundle

    registry = registry or Registry()
    head = trained.folded()
    a, b, ok = pair_arrays(parity_pairs, vectors, trained.embedders)
    with tempfile.TemporaryDirectory() as tmp:
        path = head_onnx(head, Path(tmp) / "head.onnx")
        parity = head_parity(path, head, trained, a[ok], b[ok])
        parity = check_targets(parity, {"max_abs_logit_diff_onnx": 1e-3, "max_abs_logit_diff_numpy": 1e-6,
                                        "verdict_mismatches": 0})
        manifest = {
            "name": name, "task": "verify_head", "licence": "proprietary", "runtime": "onnxruntime",
            "input": {"size": None}, "output_dim": 1,
            "source": {"recipe": "facegate train verifier"},
            "extra": {"embedders": list(trained.embedders), "dims": list(trained.dims),
                      "embedder_sha256": {e: registry.manifest(e).sha256 for e in trained.embedders},
                      "features": list(trained.settings.features), "settings": asdict(trained.settings),
                      "score": "logit", "decision_threshold_logit": round(trained.threshold, 6),
                      "inputs": "a, b: (N, sum of dims) float32, each embedder's unit vector end to end",
                      "outputs": "probability (N,), logit (N,)", **trained.provenance},
        }
        if thresholds:
            manifest["thresholds"] = thresholds
        return write_bundle(out, manifest, path, parity)
