"""Device-side verification head: numpy scoring, ONNX bundle loading, 1:N search, identify bench hook."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge.errors import ModelError
from edge.match.head import HeadIndex
from edge.models.registry import Registry
from edge.runtime.onnx import OnnxRuntime
from edge.verifier import VerifierHead, head_identities, resolve_head, sigmoid


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def a_head(rng: np.random.Generator, dims: tuple[int, ...] = (8, 4)) -> VerifierHead:
    d = sum(dims)
    return VerifierHead(embedders=("e1", "e2")[: len(dims)], dims=dims, bias=-0.5,
                        weights={"abs": -rng.random(d), "prod": rng.random(d) + 1, "chi2": -0.1 * rng.random(d)})


def test_logit_matrix_equals_pairwise_logits() -> None:
    rng = np.random.default_rng(0)
    head = a_head(rng)
    p, g = unit_rows(rng, 5, 12), unit_rows(rng, 7, 12)
    m = head.logit_matrix(p, g, block=2)
    pairwise = np.array([[head.logit_concat(p[i:i + 1], g[j:j + 1])[0] for j in range(7)] for i in range(5)])
    assert np.allclose(m, pairwise)


def test_cosine_head_is_the_cosine() -> None:
    rng = np.random.default_rng(1)
    head = VerifierHead(("e1",), (6,), {"prod": np.ones(6)}, 0.0)
    a, b = unit_rows(rng, 3, 6), unit_rows(rng, 3, 6)
    assert np.allclose(head.logit({"e1": a}, {"e1": b}), (a * b).sum(1))
    assert np.allclose(head.probability({"e1": a}, {"e1": b}), 1 / (1 + np.exp(-(a * b).sum(1))))
    assert sigmoid(np.array([1000.0, -1000.0])).tolist() == [1.0, 0.0]


def test_concat_refuses_missing_or_wrong_embeddings() -> None:
    head = a_head(np.random.default_rng(2))
    with pytest.raises(ModelError, match="needs a e2"):
        head.concat({"e1": np.zeros(8)})
    with pytest.raises(ModelError, match="has 5 values"):
        head.concat({"e1": np.zeros(8), "e2": np.zeros(5)})


def test_head_matcher_finds_the_enrolled_identity() -> None:
    rng = np.random.default_rng(3)
    head = VerifierHead(("e1", "e2"), (8, 4), {"prod": np.ones(12), "abs": -0.1 * np.ones(12)}, 0.0)
    gallery = {f"id{k}": {"e1": unit_rows(rng, 1, 8)[0], "e2": unit_rows(rng, 1, 4)[0]} for k in range(20)}
    m = HeadIndex(head)
    for name, v in gallery.items():
        m.add(name, v)
    assert m.rows == 20 and m.identities == 20
    probes = [{e: v + 0.05 * rng.normal(size=v.shape) for e, v in gallery[n].items()} for n in ("id3", "id17")]
    res = [m.search(p, k=3) for p in probes]
    assert [r[0].name for r in res] == ["id3", "id17"] and all(len(r) == 3 for r in res)
    assert res[0][0].score > res[0][1].score
    # Several templates per identity: the best row counts, the identity is listed once.
    m.add("id3", {"e1": -gallery["id3"]["e1"], "e2": -gallery["id3"]["e2"]})
    names = [x.name for x in m.search(probes[0], k=5)]
    assert names.count("id3") == 1 and m.identities == 20


def test_bundle_round_trip_through_onnx_and_numpy(tmp_path: Path) -> None:
    """An exported head (export/train/verifier.py writes the graph) scores the same in onnxruntime and numpy."""
    from export.bundle import write_bundle
    from export.train.verifier import head_onnx

    rng = np.random.default_rng(4)
    head = a_head(rng)
    model = head_onnx(head, tmp_path / "head.onnx")
    manifest = {"name": "head-test", "task": "verify_head", "licence": "proprietary", "input": {"size": None},
                "source": {"recipe": "test"}, "extra": {"embedders": ["e1", "e2"], "dims": [8, 4],
                                                        "trained_on": {"pairs_file": "pairsDevTrain.txt"}}}
    bundle = write_bundle(tmp_path / "models", manifest, model, {"crops": 0})
    loaded = resolve_head(bundle)
    a, b = unit_rows(rng, 9, 12), unit_rows(rng, 9, 12)
    assert np.allclose(loaded.logit_concat(a, b), head.logit_concat(a, b), atol=1e-5)
    prob, logit = OnnxRuntime(bundle / "model.onnx").run({"a": a.astype(np.float32), "b": b.astype(np.float32)})
    assert np.allclose(logit, head.logit_concat(a, b), atol=1e-4) and np.allclose(prob, sigmoid(logit), atol=1e-6)
    # Installed into a model directory, the registry finds it by name and checks its sha256.
    reg = Registry(tmp_path / "models")
    assert resolve_head("head-test", reg).dims == (8, 4)
    (bundle / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(ModelError, match="sha256"):
        resolve_head("head-test", reg)


def test_a_non_head_model_is_refused() -> None:
    with pytest.raises(ModelError, match="not a verification head"):
        resolve_head("sface", Registry())


def test_head_identities_name_its_training_pairs(lfw: Path) -> None:
    from edge.models.manifest import Manifest

    m = Manifest.from_dict({"name": "h", "task": "verify_head", "file": "model.onnx", "sha256": "0" * 64,
                            "source": {"file": "model.onnx"}, "licence": "x", "runtime": "onnxruntime",
                            "input": {"size": None}, "extra": {"trained_on": {"pairs_file": "pairsDevTrain.txt"}},
                            "thresholds": {"verify": {"value": 1.0, "metric": "logit",
                                                      "provenance": {"pairs_file": "pairsDevTest.txt"}}}})
    head = VerifierHead(("sface",), (128,), {"prod": np.ones(128)}, 0.0, name="h", manifest=m)
    ids, used = head_identities(head, lfw / "images")
    assert len(used) == 2 and len(ids) == 2132 + 963  # View 1's two halves share no identity
    missing = VerifierHead(("sface",), (128,), {"prod": np.ones(128)}, 0.0, name="h", manifest=m)
    with pytest.raises(ModelError, match="not found"):
        head_identities(missing, lfw)  # pairs files are looked for beside the images folder


def test_identify_bench_with_a_cosine_head_matches_the_plain_bench(lfw: Path, pipeline, tmp_path: Path) -> None:
    """A head whose logit is SFace's cosine must reproduce bench identify's DIR on the same identities."""
    from edge.eval import identify
    from export.bundle import write_bundle
    from export.train.verifier import head_onnx

    head = VerifierHead(("sface",), (128,), {"prod": np.ones(128)}, 0.0)
    sface = pipeline.manifest
    ident = sface.threshold("identify")
    thresholds = {"identify": {"value": ident.value, "metric": "logit", "tail": [list(p) for p in ident.tail],
                               "provenance": {"pairs_file": "pairsDevTrain.txt"}}}
    manifest = {"name": "cos-head", "task": "verify_head", "licence": "x", "input": {"size": None},
                "source": {"recipe": "test"}, "thresholds": thresholds,
                "extra": {"embedders": ["sface"], "dims": [128], "trained_on": {"pairs_file": "pairsDevTrain.txt"}}}
    bundle = write_bundle(tmp_path, manifest, head_onnx(head, tmp_path / "h.onnx"), {"crops": 0})
    # A small folder-per-person tree: 30 LFW identities not in DevTrain, each with ≥ 2 photos, plus 30 others.
    from edge.eval.lfw import read_pairs

    dev = {r.split("/")[0] for p in read_pairs(lfw / "pairsDevTrain.txt") for r in (p.a, p.b)}
    tree = tmp_path / "lfw" / "images"
    people = sorted(d for d in (lfw / "images").iterdir() if d.name not in dev)
    multi = [d for d in people if len(list(d.iterdir())) >= 2][:30]
    single = [d for d in people if len(list(d.iterdir())) == 1][:30]
    for d in multi + single:
        (tree / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[:3]:
            (tree / d.name / f.name).symlink_to(f)
    (tmp_path / "lfw" / "pairsDevTrain.txt").symlink_to(lfw / "pairsDevTrain.txt")
    plain = identify.run(tree, pipeline, gallery_size=10, seeds=2)
    headed = identify.run(tree, pipeline, gallery_size=10, seeds=2, verifier=bundle)
    assert headed["dir_at_fpir"] == plain["dir_at_fpir"] and headed["rank1"] == pytest.approx(plain["rank1"])
    assert headed["model"].startswith("cos-head") and json.dumps(headed)


def test_head_templates_mean_scores_the_mean_of_an_identitys_logits() -> None:
    """decision.templates = "mean" under a head: an identity scores the mean of its photos' logits, not its best."""
    rng = np.random.default_rng(4)
    head = VerifierHead(("e1",), (8,), {"prod": np.ones(8)}, 0.0)  # the logit is the cosine
    near, far = unit_rows(rng, 1, 8)[0], unit_rows(rng, 1, 8)[0]
    probe = {"e1": near}
    logits = [float(near @ near), float(near @ far)]
    for templates, want in (("max", max(logits)), ("mean", sum(logits) / 2)):
        m = HeadIndex(head, templates)
        m.add("a", {"e1": np.stack([near, far])})
        assert m.search(probe, k=1)[0].score == pytest.approx(want)
