"""`facegate explain`: occlusion maps of a decision and unit grids of the model, on the shipped models and LFW."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.cli import main
from edge.errors import FacegateError
from edge.explain.bench import masking_check, view1_genuine
from edge.explain.match import MatchExplainer, explain_stored
from edge.explain.occlusion import FaceView, Grid, Occluder, central_box, mean_cosine
from edge.explain.units import TopK, UnitModel
from edge.imageio import load_bgr
from edge.models.registry import BUILTIN_DIR, Registry

REPO = Path(__file__).resolve().parents[2]


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def genuine(lfw: Path) -> tuple[Path, Path]:
    """The first genuine pair of View 1's development training file."""
    a, b = view1_genuine(lfw / "pairsDevTrain.txt", 1)[0]
    return lfw / "images" / a, lfw / "images" / b


@pytest.fixture(scope="module")
def explainer(pipeline) -> MatchExplainer:
    return MatchExplainer(pipeline, patch=16, stride=8)


@pytest.fixture(scope="module")
def explained(explainer: MatchExplainer, genuine):
    views = [explainer.view(load_bgr(p)) for p in genuine]
    return views, explainer.pair(*views)


def test_grid_covers_the_crop_to_its_border() -> None:
    g = Grid((112, 112), 16, 8)
    assert g.shape == (13, 13) and g.xs[0] == 0 and g.xs[-1] == 96
    g5 = Grid((112, 112), 16, 5)  # 96 is not a multiple of 5: one more patch on the border
    assert g5.ys.tolist() == [*range(0, 96, 5), 96] and g5.shape == (21, 21)
    assert g5.mask([(0, 0), (20, 20)]).sum() == 2 * 16 * 16


def test_map_shape_and_value_range(explained, pipeline, genuine) -> None:
    _, ex = explained
    for side in ex.sides:
        m = side.map
        assert m.drops.shape == (13, 13) and np.isfinite(m.drops).all()
        # a drop is the score minus a cosine: within [score − 1, score + 1]
        assert (m.drops <= m.score + 1).all() and (m.drops >= m.score - 1).all()
        assert m.drops.max() > 0.02  # greying some part of a genuine face costs score
        heat = m.pixels()
        assert heat.shape == (112, 112)
        assert m.drops.min() - 1e-6 <= heat.min() and heat.max() <= m.drops.max() + 1e-6
    # The unoccluded score is the device's own cosine for this pair.
    embs = [pipeline.embed_one(load_bgr(p))[1] for p in genuine]
    assert ex.score == pytest.approx(float(embs[0] @ embs[1]), abs=1e-5)
    assert ex.threshold == pipeline.manifest.threshold("verify").value and ex.match is True


def test_batching_changes_nothing(explainer: MatchExplainer, explained) -> None:
    views, _ = explained
    reference = explainer.embed(views[1])
    grid = Grid((112, 112), 16, 16)
    masks = np.stack([grid.mask([c]) for c in grid.cells()[:11]])
    one = Occluder(views[0], explainer.embedders, reference, batch=64).scores(masks)
    few = Occluder(views[0], explainer.embedders, reference, batch=4).scores(masks)
    assert np.allclose(one, few, atol=1e-5)


def test_the_blur_occluder_removes_detail_only(explainer: MatchExplainer, explained) -> None:
    """A blurred patch over a flat region changes nothing; a grey one paints a new colour there."""
    views, _ = explained
    tpl = explainer.display
    crop = views[0].crop(tpl).copy()
    crop[:48, :48] = (40, 60, 90)  # a flat corner, wider than the blur's reach from the first patch
    flat = FaceView(crop, np.asarray(tpl.points, np.float64))  # the crop is its own aligned face
    reference = explainer.embed(views[1])
    grid = Grid((112, 112), 16, 8)
    masks = np.stack([np.zeros((112, 112), np.float32), grid.mask([(0, 0)]), grid.mask([(6, 6)])])
    blur = Occluder(flat, explainer.embedders, reference, fill="blur", patch=16).scores(masks)
    grey = Occluder(flat, explainer.embedders, reference, fill="grey", patch=16).scores(masks)
    assert blur[0] == pytest.approx(grey[0], abs=1e-6)  # unoccluded: the same face
    assert blur[1] == pytest.approx(blur[0], abs=1e-4)  # flat corner blurred: the same pixels
    assert abs(grey[1] - grey[0]) > 1e-3
    assert blur[0] - blur[2] > 0.01  # the face's centre blurred: its detail is gone, the score drops
    with pytest.raises(FacegateError, match="fill"):
        Occluder(flat, explainer.embedders, reference, fill="noise")


def test_masking_the_top_cells_costs_more_than_random_cells(explained) -> None:
    _, ex = explained
    rng = np.random.default_rng(0)
    for side in ex.sides:
        top, random = masking_check(side, 3, 20, rng)
        assert top > 0 and top > random, (side.label, top, random)


def test_strongest_cells_lie_in_the_central_box(explained, explainer: MatchExplainer) -> None:
    _, ex = explained
    box = central_box(explainer.display)
    assert box == ex.central
    for side in ex.sides:
        x, y = side.map.grid.centre(*side.map.top_cells(1)[0])
        assert box[0] <= x <= box[2] and box[1] <= y <= box[3]


def test_picture_and_json(explained, tmp_path: Path) -> None:
    _, ex = explained
    image = cv2.imdecode(np.frombuffer(ex.png(), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1] > 2 * 112 * 2 and image.shape[0] > 112 * 2
    data = json.loads(json.dumps(ex.to_dict()))
    assert data["model"] == Registry().default_embedder() and data["match"] is True
    for side in data["sides"]:
        assert np.asarray(side["map"]["drops"]).shape == (13, 13)
        assert len(side["map"]["top_cells"]) == 3 and len(side["map"]["xs"]) == 13


@pytest.fixture(scope="module")
def wide(_state_dir: Path) -> str:
    """A second embedder that is SFace behind a different alignment (the face 0.9× as large, shifted): a
    stand-in for dlib's ResNet, whose bundle has to be exported first."""
    raw = json.loads((BUILTIN_DIR / "sface.json").read_text())
    source = Registry().source_path(Registry().manifest("sface"))
    raw.update(name="sface-wide", source={"file": source.name})  # a bundle names files inside its folder
    raw["alignment"]["points"] = [[0.9 * x + 5.6, 0.9 * y + 3.0] for x, y in raw["alignment"]["points"]]
    folder = _state_dir / "models" / "sface-wide"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / source.name).exists():
        (folder / source.name).symlink_to(source)
    (folder / "manifest.json").write_text(json.dumps(raw))
    return "sface-wide"


def test_two_embedders_share_one_occluder(wide: str, explained) -> None:
    from edge.pipeline import FacePipeline

    views, _ = explained
    ex = MatchExplainer(FacePipeline(embedder="sface", extra_embedders=(wide,)), patch=16, stride=16)
    assert ex.model == "sface+sface-wide"
    reference = ex.embed(views[1])
    occ = ex.occluder(views[0], reference)
    # The display crop's patch is carried into the other crop through both alignments: 0.9× and shifted.
    assert occ._maps[0] is None
    assert np.allclose(occ._maps[1], [[0.9, 0, 5.6], [0, 0.9, 3.0]], atol=1e-6)
    probe = ex.embed(views[0])
    per = [float((probe[e] @ reference[e].T)[0, 0]) for e in reference]
    assert occ.base_score() == pytest.approx(np.mean(per), abs=1e-5)
    assert mean_cosine(probe, reference)[0] == pytest.approx(np.mean(per), abs=1e-6)
    grid = Grid((112, 112), 16, 16)
    other = cv2.warpAffine(grid.mask([(1, 2)]), occ._maps[1], (112, 112))
    ys, xs = np.nonzero(other > 0.5)  # the same patch (rows 16–31, columns 32–47), where the map puts it
    assert xs.mean() == pytest.approx(0.9 * 39.5 + 5.6, abs=0.5)
    assert ys.mean() == pytest.approx(0.9 * 23.5 + 3.0, abs=0.5)
    fused = ex.pair(*views)
    assert fused.threshold is None and "no calibrated threshold" in fused.threshold_kind
    assert fused.sides[0].map.drops.shape == (7, 7)


def test_explain_against_a_stored_identity(capsys, tmp_path: Path, genuine, explainer: MatchExplainer,
                                           explained) -> None:
    from edge.match.thresholds import identify_threshold as threshold_for
    from edge.store.db import Store

    views, pair = explained
    kept, bare = tmp_path / "kept.db", tmp_path / "bare.db"
    assert _run(capsys, "enroll", "--store", kept, "--keep-crops", "someone", genuine[1], "--policy", "largest")[0] == 0
    assert _run(capsys, "enroll", "--store", bare, "someone", genuine[1], "--policy", "largest")[0] == 0
    t, _ = threshold_for(explainer.pipeline.manifest, 1, 0.01)
    with Store(kept) as store:
        ex = explain_stored(explainer, store, "someone", views[0], 0.01)
    assert ex.extra["reference"] == "kept crop" and all(s.map is not None for s in ex.sides)
    assert ex.score == pytest.approx(pair.score, abs=1e-3)  # the kept crop is the same photo's face
    assert ex.threshold == pytest.approx(t, abs=1e-6) and ex.threshold_kind.startswith("identify")
    with Store(bare) as store:
        ex = explain_stored(explainer, store, "someone", views[0], 0.01)
        template = store.templates(explainer.model, "someone")[0][2]
    assert ex.extra["reference"] == "templates" and ex.sides[1].map is None and ex.sides[1].crop is None
    assert ex.score == pytest.approx(float(explainer.embed(views[0])[explainer.model][0] @ template), abs=1e-5)
    assert np.allclose(ex.sides[0].map.drops, pair.sides[0].map.drops, atol=2e-3)
    # through the command line: a picture, JSON, and one-line errors
    out = tmp_path / "id.png"
    code, text, _ = _run(capsys, "explain", "identify", genuine[0], "--store", bare, "--id", "someone", "--out", out,
                         "--stride", "16", "--json")
    data = json.loads(text)
    assert code == 0 and out.is_file() and data["identity"] == "someone" and data["sides"][1]["map"] is None
    code, text, err = _run(capsys, "explain", "identify", genuine[0], "--store", bare, "--id", "nobody", "--out", out)
    assert code == 2 and text == "" and "unknown identity 'nobody'" in err and err.count("\n") == 1
    code, _, err = _run(capsys, "explain", "identify", genuine[0], "--store", tmp_path / "none.db", "--id", "x",
                        "--out", out)
    assert code == 2 and "no store at" in err and not (tmp_path / "none.db").exists()


def test_cli_match_and_its_errors(capsys, tmp_path: Path, genuine, lfw: Path) -> None:
    out = tmp_path / "sub" / "map.png"
    code, text, _ = _run(capsys, "explain", "match", *genuine, "--out", out, "--stride", "16", "--json")
    data = json.loads(text)
    assert code == 0 and out.is_file() and data["out"] == str(out)
    assert data["sides"][0]["map"]["patch"] == 16 and np.asarray(data["sides"][0]["map"]["drops"]).shape == (7, 7)
    code, text, err = _run(capsys, "explain", "match", *genuine, "--out", out, "--patch", "0")
    assert code == 2 and text == "" and "patch 0" in err and err.count("\n") == 1
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    code, _, err = _run(capsys, "explain", "match", notes, genuine[0], "--out", out)
    assert code == 2 and "notes.txt" in err and err.count("\n") == 1
    code, _, err = _run(capsys, "explain", "bench", "--images", lfw / "images", "--pairs", lfw / "pairs.txt")
    assert code == 2 and "View 2" in err
    code, _, err = _run(capsys, "explain", "bench", "--images", lfw / "images", "--pairs", lfw / "pairsDevTest.txt",
                        "--limit", "0")
    assert code == 2 and "--limit" in err


def test_bench_reports_the_fraction(capsys, lfw: Path, tmp_path: Path) -> None:
    code, text, _ = _run(capsys, "explain", "bench", "--images", lfw / "images", "--pairs", lfw / "pairsDevTest.txt",
                         "--limit", "2", "--stride", "16", "--json", "--details", "--out", tmp_path)
    r = json.loads(text)
    assert code == 0 and r["pairs"] == 2 and r["scored"] == 2 and r["cells_per_map"] == 49
    assert 0.0 <= r["inside_fraction"] <= 1.0 and set(r["inside_fraction_by_top"]) == {"1", "3"}
    assert len(r["details"]) == 2 and len(list(tmp_path.glob("*.png"))) == 2


# -- units ----------------------------------------------------------------------------------------------------
def test_top_k_keeps_each_units_strongest_images() -> None:
    top = TopK(channels=2, n=2)
    acts = np.zeros((3, 2, 2, 2), np.float32)
    acts[0, 0, 1, 0], acts[1, 0, 0, 1], acts[2, 0, 1, 1] = 5, 7, 6  # unit 0: images 1 then 2
    acts[0, 1, 0, 0], acts[2, 1, 1, 0] = 3, 1
    top.update(acts[:2], 0)
    top.update(acts[2:], 2)
    assert top.images[0].tolist() == [1, 2] and top.values[0].tolist() == [7, 6]
    assert top.where[0].tolist() == [[0, 1], [1, 1]]
    assert top.images[1].tolist() == [0, 2] and top.where[1, 0].tolist() == [0, 0]


def test_sface_feature_maps_and_taps() -> None:
    model = UnitModel(Registry(), "sface")
    layers = model.layers()
    assert [la.depth for la in layers] == ["shallow", "middle", "deep"]
    sizes = [la.field.size[0] for la in layers]
    assert sizes == sorted(sizes) and sizes[0] <= 16 and sizes[-1] >= 48
    outs = model.runtime(layers).run({"data": np.zeros((2, 3, 112, 112), np.float32)})
    for la, o in zip(layers, outs, strict=True):
        assert o.shape[0] == 2 and o.shape[2:] == la.field.shape


def test_unit_grids_render_without_torch(lfw: Path, tmp_path: Path) -> None:
    """Three depths of the shipped SFace, with torch made unimportable: device dependencies only."""
    code = ("import sys; sys.modules['torch'] = None; from edge.cli import main; "
            f"sys.exit(main(['explain', 'units', '--images', {str(lfw / 'images')!r}, '--limit', '12', "
            f"'--out', {str(tmp_path)!r}, '--units', '4', '--top', '5', '--json']))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    assert data["images"] == 12 and [la["depth"] for la in data["layers"]] == ["shallow", "middle", "deep"]
    for la, f in zip(data["layers"], data["files"], strict=True):
        grid = cv2.imread(f)
        assert grid is not None and grid.shape[0] > 4 * 64 and grid.shape[1] > 5 * 64
        assert len(la["units"]) == 4 and all(len(u["top"]) == 5 for u in la["units"])
        for u in la["units"]:
            acts = [t["activation"] for t in u["top"]]
            assert acts == sorted(acts, reverse=True)
            y0, x0, y1, x1 = u["top"][0]["box_yxyx"]
            assert y1 - y0 == x1 - x0 == la["receptive_field"]["size"][0]


def test_fused_explains_the_fused_score_at_its_own_threshold(capsys, genuine, tmp_path: Path) -> None:
    """--model fused: the map's score is the fused z-score the door decides on, at the fusion's 1:1 threshold
    (not a mean of cosines without one)."""
    pytest.importorskip("face_recognition_models")
    from edge.match.factory import make_scorer
    from edge.pipeline import FacePipeline

    code, text, _ = _run(capsys, "explain", "match", genuine[0], genuine[1], "--model", "fused", "--stride", "16",
                         "--out", tmp_path / "fused.png", "--json")
    data = json.loads(text)
    reg = Registry()
    fused = reg.manifest("fused")
    assert code == 0 and data["model"] == "fused" and data["match"] is True
    assert data["threshold"] == pytest.approx(fused.threshold("verify").value)
    scorer = make_scorer(reg, fusion="fused")
    pipe = FacePipeline(reg, embedder=scorer.embedders[0], extra_embedders=scorer.embedders[1:])
    probes = [pipe.probe(load_bgr(p), "largest")[1] for p in genuine]
    assert data["score"] == pytest.approx(scorer.pair(*probes), abs=0.1)
    assert data["score"] > 1.5  # a z-score, far above any cosine
