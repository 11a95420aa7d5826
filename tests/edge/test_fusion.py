"""Score fusion and track fusion: the arithmetic, the guards around calibration (View 1 only, members pinned),
and the door benchmark end to end on a small LFW folder."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.errors import FacegateError, ModelError
from edge.match.fusion import Fusion, FusionScorer
from edge.match.gallery import Gallery
from edge.match.track import TrackProbe, fuse_probes
from edge.models.manifest import Manifest
from edge.models.registry import Registry


def _fusion(members=("a", "b"), mu=(0.1, 0.8), sigma=(0.1, 0.05), weights=(1.0, 1.0), **extra) -> Manifest:
    return Manifest.from_dict({
        "name": "f", "task": "fusion", "licence": "test", "source": {"recipe": "test"},
        "extra": {"members": list(members),
                  "stats": {m: {"mu": u, "sigma": s} for m, u, s in zip(members, mu, sigma, strict=True)},
                  "weights": dict(zip(members, weights, strict=True)), **extra},
        "thresholds": {"verify": {"value": 3.0, "metric": "z"},
                       "identify": {"value": 3.5, "metric": "z", "tail": [[0.1, 1.0], [0.01, 2.0], [0.001, 3.0]]}}})


def _unit(rng, n, d):
    v = rng.normal(size=(n, d))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_each_member_counts_in_impostor_standard_deviations() -> None:
    scorer = FusionScorer(_fusion())
    a = {"a": np.array([1.0, 0.0]), "b": np.array([1.0, 0.0])}
    b = {"a": np.array([0.6, 0.8]), "b": np.array([0.9, np.sqrt(1 - 0.81)])}
    expected = ((0.6 - 0.1) / 0.1 + (0.9 - 0.8) / 0.05) / 2
    assert scorer.pair(a, b) == pytest.approx(expected)
    rng = np.random.default_rng(0)
    probes = [{"a": x, "b": y} for x, y in zip(_unit(rng, 5, 8), _unit(rng, 5, 8), strict=True)]
    matrix = scorer.pair_matrix(probes[:2], probes)
    assert matrix.shape == (2, 5) and np.allclose(matrix, [[scorer.pair(p, q) for q in probes] for p in probes[:2]])
    weighted = FusionScorer(_fusion(weights=(3.0, 1.0)))
    assert weighted.pair(a, b) == pytest.approx((3 * 5.0 + 1 * 2.0) / 4)


def test_identify_over_a_gallery_takes_each_identitys_best_photo() -> None:
    rng = np.random.default_rng(1)
    gallery = Gallery(("a", "b"))
    people = {f"p{k}": {"a": _unit(rng, 2, 16), "b": _unit(rng, 2, 16)} for k in range(30)}
    for name, rows in people.items():
        gallery.add(name, rows)
    scorer = FusionScorer(_fusion(), gallery)
    probe = {"a": people["p7"]["a"][1], "b": people["p7"]["b"][1]}  # the second photo of p7
    r = scorer.identify(probe, top=3)
    assert r.candidate == "p7" and r.match and len(r.candidates) == 3 and r.margin > 0
    assert r.score == pytest.approx(scorer.pair(probe, probe))
    assert scorer.verify(probe, "p7").match and not scorer.verify(probe, "p8").match


def test_a_fusion_refuses_members_it_was_not_calibrated_on(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    sface = reg.manifest("sface")
    good = _fusion(("sface", "sface"), member_sha256={"sface": sface.sha256})
    Fusion(good).check_members(reg)
    with pytest.raises(ModelError, match="recalibrate"):
        Fusion(_fusion(("sface", "sface"), member_sha256={"sface": "0" * 64})).check_members(reg)
    with pytest.raises(ModelError, match="two or more members"):
        Fusion(Manifest.from_dict({"name": "x", "task": "fusion", "licence": "t", "source": {},
                                   "extra": {"members": ["sface"]}}))


def test_calibration_never_reads_view_2(lfw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused by content, whatever the file is called; and a View-1 calibration opens no View-2-only image."""
    from edge.eval import calibrate as cal
    from edge.eval import lfw as lfw_module

    renamed = tmp_path / "innocent.txt"
    shutil.copy(lfw / "pairs.txt", renamed)
    for f in (lfw / "pairs.txt", renamed):
        with pytest.raises(FacegateError, match="View 2"):
            cal.calibrate_fusion("f", ("sface", "sface-mirror"), lfw / "images", f, 1e-2)
    lines = (lfw / "pairsDevTrain.txt").read_text().splitlines()
    subset = tmp_path / "dev.txt"
    subset.write_text("12\n" + "\n".join(lines[1:13] + lines[1101:1113]) + "\n")
    opened: list[str] = []
    real = lfw_module.load_bgr
    monkeypatch.setattr(lfw_module, "load_bgr", lambda p: opened.append(Path(p).relative_to(lfw / "images")
                                                                         .as_posix()) or real(p))
    models = tmp_path / "models"
    _mirror_sface(models)
    r = cal.calibrate_fusion("f", ("sface", "sface-mirror"), lfw / "images", subset, 0.05,
                             registry=Registry(models))
    view2_only = lfw_module.images_named_by([lfw / "pairs.txt"]) - lfw_module.images_named_by(
        [lfw / "pairsDevTrain.txt", lfw / "pairsDevTest.txt"])
    assert opened and set(opened) <= lfw_module.images_named_by([subset]) and not set(opened) & view2_only
    assert r["thresholds"]["verify"]["provenance"]["pairs_file"] == "dev.txt"
    assert set(r["extra"]["stats"]) == {"sface", "sface-mirror"} and r["extra"]["stats"]["sface"]["sigma"] > 0


def _mirror_sface(model_dir: Path) -> None:
    """A second embedder without PyTorch: SFace with the test-time flip (vectors differ from SFace's)."""
    reg = Registry(model_dir)
    sface = reg.manifest("sface")
    prepared = reg.runtime_file(sface)
    bundle = model_dir / "sface-mirror"
    bundle.mkdir(parents=True)
    shutil.copy(prepared, bundle / "model.onnx")
    m = sface.to_dict()
    m.update(name="sface-mirror", file="model.onnx", sha256=hashlib.sha256(prepared.read_bytes()).hexdigest(),
             source={"file": "model.onnx"}, prepare=[], flip_average=True)
    (bundle / "manifest.json").write_text(json.dumps(m))


def test_a_track_keeps_its_best_frames_and_is_scored_on_their_mean_scores() -> None:
    """Noisy frames of one enrolled person: single frames are sometimes won by someone else, the track's mean
    scores pick the person; and an unknown track's mean score stays within its frames' range (no inflation)."""
    from edge.match.cosine import CosineScorer

    rng = np.random.default_rng(2)
    track = TrackProbe(keep=3)
    qualities = [0.2, 0.9, 0.1, 0.8, 0.3, 0.95, 0.05, 0.4]
    frames = [{"sface": v} for v in _unit(rng, 8, 32)]
    for q, f in zip(qualities, frames, strict=True):
        best = track.add(q, f)
    assert len(track) == 3 and [q for q, _ in track.frames] == [0.95, 0.9, 0.8]
    assert all(np.array_equal(b["sface"], frames[i]["sface"]) for b, i in zip(best, (5, 1, 3), strict=True))

    people = _unit(rng, 40, 64)
    gallery = Gallery(("sface",))
    for k, v in enumerate(people):
        gallery.add(f"p{k}", {"sface": v})
    scorer = CosineScorer(Registry().manifest("sface"), gallery)
    noisy = [people[3] + 5.0 * _unit(rng, 1, 64)[0] for _ in range(30)]
    noisy = [{"sface": v / np.linalg.norm(v)} for v in noisy]
    single = sum(scorer.identify(p, threshold=-1).candidate == "p3" for p in noisy)
    tracks = sum(scorer.identify_track(noisy[i:i + 3], threshold=-1).candidate == "p3" for i in range(0, 30, 3))
    assert tracks / 10 > single / 30
    stranger = [{"sface": v} for v in _unit(rng, 3, 64)]
    r = scorer.identify_track(stranger, threshold=-1)
    per_frame = [scorer.identity_score(p, r.candidate) for p in stranger]
    assert min(per_frame) <= r.score <= max(per_frame) and r.score == pytest.approx(np.mean(per_frame))
    assert fuse_probes(stranger, ["sface"])["sface"].shape == (64,)


def test_bench_door_on_a_small_folder(lfw: Path, tmp_path: Path) -> None:
    """Twelve identities outside every calibration file, four photos each: the cells come out, m = 3 tracks
    are scored, and the calibration identities are refused as draws."""
    from edge.eval import door
    from edge.eval.lfw import images_named_by, pair_identities, read_pairs
    from edge.match.factory import make_scorer
    from edge.pipeline import FacePipeline

    fitted = pair_identities(read_pairs(lfw / "pairsDevTrain.txt"))
    root = tmp_path / "people"
    picked = 0
    for person in sorted((lfw / "images").iterdir()):
        photos = sorted(person.glob("*.jpg"))
        if person.name in fitted or len(photos) < 4:
            continue
        (root / person.name).mkdir(parents=True)
        for p in photos[:4]:
            shutil.copy(p, root / person.name / p.name)
        picked += 1
        if picked == 12:
            break
    shutil.copy(lfw / "pairsDevTrain.txt", tmp_path / "pairsDevTrain.txt")  # where the provenance points
    reg = Registry()
    scorers = {"sface": make_scorer(reg, "sface")}
    r = door.run(root, FacePipeline(reg, embedder="sface"), scorers, gallery_sizes=[6], enrol=[1],
                 probes_per_track=[1, 3], seeds=2)
    cells = {c["track_frames"]: c for c in r["cells"]}
    assert set(cells) == {1, 3} and all("skipped" not in c for c in cells.values())
    assert cells[3]["known_tracks"] == 12 and cells[3]["unknown_tracks"] == 12  # 6 known + 6 unknown per seed
    assert 0 <= cells[1]["rank1"] <= 1 and r["ms_per_face"]["sface"] > 0
    assert images_named_by([tmp_path / "pairsDevTrain.txt"])  # sanity: the file was read for the exclusion


def test_mean_over_photos_gives_an_impostor_one_chance_not_several() -> None:
    """Three photos per person: under "max" a random probe's best score over an identity is the max of three
    draws, under "mean" their mean — whose spread is narrower than one photo's, so the 1:N threshold calibrated
    on single photos holds."""
    from edge.match.cosine import CosineScorer

    rng = np.random.default_rng(4)
    gallery = Gallery(("sface",))
    for k in range(200):
        gallery.add(f"p{k}", {"sface": _unit(rng, 3, 32)})
    scorer = CosineScorer(Registry().manifest("sface"), gallery)
    probes = [{"sface": v} for v in _unit(rng, 300, 32)]
    worst = {}
    for templates in ("max", "mean"):
        drawn = scorer.over(gallery, templates)
        worst[templates] = np.mean([drawn.identify(p, threshold=np.inf).score for p in probes])
        p = probes[0]
        assert drawn.identity_score(p, "p5") == pytest.approx(
            getattr(np, templates)(gallery.templates("p5", "sface") @ p["sface"]))
    assert worst["mean"] < worst["max"]


def test_a_huge_template_is_scored_as_a_unit_vector_never_above_one() -> None:
    """A stored template with one exponent bit flipped (finite, norm ~1e37) must not outscore everyone: the
    index scores unit rows and unit probes, so no cosine leaves [-1, 1]."""
    from edge.match.fusion import TemplateIndex

    rng = np.random.default_rng(6)
    rows = _unit(rng, 2, 32)
    bad = rows.copy()
    bad[0, 0] = -2.6e37
    index = TemplateIndex(("sface",), lambda cos: cos[..., 0], {"alice": {"sface": bad}, "bob": {"sface": rows}},
                          "mean")
    for probe in _unit(rng, 20, 32):
        scores = index.identity_scores({"sface": probe})
        assert np.all(np.abs(scores) <= 1.0 + 1e-5)
    with pytest.raises(FacegateError, match="zero, NaN or infinite"):
        TemplateIndex(("sface",), lambda cos: cos[..., 0], {"alice": {"sface": np.zeros((1, 32))}}, "mean")
