"""Enrolment, verify and identify through the CLI, with real models, real LFW photos and a real SQLite store."""

import json
import os
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from edge.cli import main
from edge.models.registry import Registry
from edge.store.db import Store

# The embedder enrolment uses when none is named (the manifests choose: sface-int8 as shipped).
DEFAULT = Registry().default_embedder()


def _run(capsys, *argv) -> tuple[int, dict | list | str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    try:
        return code, json.loads(out), err
    except json.JSONDecodeError:
        return code, out, err


@pytest.fixture(scope="module")
def photos(lfw):
    root = lfw / "images"
    colin = sorted((root / "Colin_Powell").glob("*.jpg"))
    tony = sorted((root / "Tony_Blair").glob("*.jpg"))
    return {"colin1": colin[0], "colin2": colin[1], "tony1": tony[0], "tony2": tony[1],
            "stranger": sorted((root / "Aaron_Peirsol").glob("*.jpg"))[0]}


def test_enroll_verify_identify_delete(capsys, tmp_path, photos):
    db = tmp_path / "s.db"
    code, out, _ = _run(capsys, "enroll", "--store", db, "colin", photos["colin1"], "--json")
    assert code == 0 and out["accepted"] == 1
    code, out, _ = _run(capsys, "enroll", "--store", db, "tony", photos["tony1"], "--json")
    assert code == 0
    code, out, _ = _run(capsys, "verify", "--store", db, "--id", "colin", photos["colin2"], "--json")
    assert code == 0 and out["match"]
    code, out, _ = _run(capsys, "verify", "--store", db, "--id", "tony", photos["colin2"], "--json")
    assert code == 1 and not out["match"]
    code, out, _ = _run(capsys, "identify", "--store", db, photos["tony2"], "--top", "2", "--json")
    assert code == 0 and out["identity"] == "tony" and len(out["candidates"]) == 2
    code, out, _ = _run(capsys, "identify", "--store", db, photos["stranger"], "--json")
    assert code == 1 and out["identity"] is None and not out["recognized"]
    code, out, _ = _run(capsys, "store", "delete", "tony", "--store", db)
    assert code == 0
    code, out, _ = _run(capsys, "identify", "--store", db, photos["tony2"], "--json")
    assert code == 1 and out["identity"] is None
    code, out, _ = _run(capsys, "store", "list", "--store", db, "--json")
    assert [r["name"] for r in out] == ["colin"]
    code, out, _ = _run(capsys, "store", "audit", "--store", db, "--json")
    assert [r["action"] for r in out] == ["enroll", "enroll", "delete"]
    code, _, err = _run(capsys, "verify", "--store", db, "--id", "nobody", photos["colin2"])
    assert code == 2 and "unknown identity" in err


def test_duplicate_guard_and_force(capsys, tmp_path, photos):
    db = tmp_path / "s.db"
    assert _run(capsys, "enroll", "--store", db, "colin", photos["colin1"])[0] == 0
    code, out, _ = _run(capsys, "enroll", "--store", db, "impostor", photos["colin2"], "--json")
    assert code == 2 and "matches another enrolled identity" in out["images"][0]["reasons"][0]
    code, out, _ = _run(capsys, "enroll", "--store", db, "impostor", photos["colin2"], "--force", "--json")
    assert code == 0 and out["accepted"] == 1


def test_quality_gate_says_why(capsys, tmp_path, photos):
    img = cv2.imread(str(photos["colin1"]))
    cv2.imwrite(str(tmp_path / "blurred.png"), cv2.GaussianBlur(img, (0, 0), 6))
    cv2.imwrite(str(tmp_path / "dark.png"), (img * 0.12).astype(np.uint8))
    canvas = np.full((2000, 2000, 3), 120, np.uint8)
    canvas[1000:1050, 1000:1050] = cv2.resize(img, (50, 50))  # a 20-px face: below --min-face
    cv2.imwrite(str(tmp_path / "tiny.png"), canvas)
    code, out, _ = _run(capsys, "enroll", "--store", tmp_path / "s.db", "x", tmp_path / "blurred.png",
                        tmp_path / "dark.png", tmp_path / "tiny.png", "--json")
    assert code == 2 and out["accepted"] == 0
    reasons = {img["image"].rsplit("/", 1)[-1]: " ".join(img["reasons"]) for img in out["images"]}
    assert "blurred" in reasons["blurred.png"]
    assert "too dark" in reasons["dark.png"] or "no face" in reasons["dark.png"]
    assert "no face" in reasons["tiny.png"] or "too small" in reasons["tiny.png"]
    code, out, _ = _run(capsys, "store", "list", "--store", tmp_path / "s.db", "--json")
    assert out == []  # nothing half-written


def test_bad_and_unusual_inputs(capsys, tmp_path, photos):
    rgb = np.asarray(Image.open(photos["colin1"]).convert("RGB"))
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    Image.new("L", (20000, 20000)).save(tmp_path / "huge.png", optimize=True)
    Image.fromarray(rgb).convert("L").save(tmp_path / "grey.jpg")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), "RGBA").save(tmp_path / "alpha.png")
    code, out, _ = _run(capsys, "enroll", "--store", tmp_path / "s.db", "colin", tmp_path / "zero.jpg",
                        tmp_path / "text.jpg", tmp_path / "huge.png", tmp_path / "grey.jpg", tmp_path / "cmyk.jpg",
                        tmp_path / "alpha.png", "--json")
    by_name = {img["image"].rsplit("/", 1)[-1]: img for img in out["images"]}
    assert "empty" in by_name["zero.jpg"]["reasons"][0]
    assert "not a readable image" in by_name["text.jpg"]["reasons"][0]
    assert "exceeds the limit" in by_name["huge.png"]["reasons"][0]
    assert all(by_name[n]["accepted"] for n in ("grey.jpg", "cmyk.jpg", "alpha.png"))
    assert code == 0 and out["accepted"] == 3


def test_exif_rotated_photo_gives_the_same_template(tmp_path, photos, pipeline):
    from edge.imageio import load_bgr

    im = Image.open(photos["colin1"])
    rotated = im.transpose(Image.Transpose.ROTATE_90)  # stored sideways …
    exif = rotated.getexif()
    exif[0x0112] = 6  # … with the EXIF tag that says "rotate 90° clockwise to display"
    rotated.save(tmp_path / "exif.jpg", exif=exif, quality=98)
    im.save(tmp_path / "upright.jpg", quality=98)
    a = pipeline.embed_one(load_bgr(tmp_path / "upright.jpg"))[1]
    b = pipeline.embed_one(load_bgr(tmp_path / "exif.jpg"))[1]
    assert float(a @ b) >= 0.99


def test_enroll_dir_summary_and_reembed(capsys, tmp_path, lfw):
    root = tmp_path / "people"
    for name in ("Colin_Powell", "Tony_Blair", "Jacques_Chirac"):
        (root / name).mkdir(parents=True)
        for f in sorted((lfw / "images" / name).glob("*.jpg"))[:3]:
            os.symlink(f, root / name / f.name)
    (root / "Broken").mkdir()
    (root / "Broken" / "x.jpg").write_text("not an image")
    db = tmp_path / "s.db"
    code, out, _ = _run(capsys, "enroll-dir", root, "--store", db, "--keep-crops", "--policy", "largest", "--json")
    assert code == 0 and out["images"] == 10 and out["identities"] == 3
    assert out["refusal_reasons"].get("unreadable image") == 1 and out["images_per_s"] > 0
    from edge.store.db import Store

    with Store(db) as store:
        before = {tid: v for _, tid, v in store.templates(DEFAULT)}
    code, out, _ = _run(capsys, "store", "reembed", "--store", db, "--embedder", DEFAULT, "--json")
    assert code == 0 and out["templates"] == len(before)
    with Store(db) as store:
        after = [v for _, _, v in store.templates(DEFAULT)]
    # Re-detected on the kept crop and re-aligned: the same face, so nearly the same template.
    best = [max(float(v @ w) for w in before.values()) for v in after]
    assert min(best) >= 0.98


def test_reembed_without_crops_says_reenrol(capsys, tmp_path, photos):
    db = tmp_path / "s.db"
    assert _run(capsys, "enroll", "--store", db, "colin", photos["colin1"])[0] == 0
    code, _, err = _run(capsys, "store", "reembed", "--store", db, "--embedder", "sface")
    assert code == 2 and "re-enrol needed" in err


def test_reembed_keeps_the_crops_and_photo_hashes_it_reembeds_from(capsys, tmp_path, photos):
    """Re-embedding the embedder that holds the kept crops replaced its templates and the crops went with them
    (ON DELETE CASCADE): a second reembed said "re-enrol needed". The crops move to the new templates."""
    db = tmp_path / "s.db"
    assert _run(capsys, "enroll", "--store", db, "--keep-crops", "colin", photos["colin1"], photos["colin2"])[0] == 0
    with Store(db) as store:
        crops = [c for _, c in store.crops("colin", DEFAULT)]
        hashes = sorted({r[0] for r in store._conn.execute("SELECT image_sha256 FROM templates")})
    assert len(crops) == 2 and len(hashes) == 2
    for embedder in (DEFAULT, DEFAULT, "sface"):  # the holder twice, then another embedder from the same crops
        code, _, err = _run(capsys, "store", "reembed", "--store", db, "--embedder", embedder, "--json")
        assert code == 0, err
        with Store(db) as store:
            assert [c for _, c in store.crops("colin", DEFAULT)] == crops
            assert store.identity("colin").crops == 2  # type: ignore[union-attr]  # never copied to sface's
            assert all(store.has_image("colin", h) for h in hashes)
    assert _run(capsys, "enroll", "--store", db, "--keep-crops", "colin", photos["colin1"], "--json")[1][
        "accepted"] == 0  # the same photo again: still a no-op


def test_encrypted_store_needs_its_key(capsys, tmp_path, photos, monkeypatch):
    keydir = tmp_path / "keys"
    keydir.mkdir()
    (keydir / "store.key").write_text(os.urandom(32).hex())
    (keydir / "store.key").chmod(0o600)
    db = tmp_path / "data" / "s.db"
    assert _run(capsys, "enroll", "--store", db, "--key-file", keydir / "store.key", "colin", photos["colin1"])[0] == 0
    code, _, err = _run(capsys, "store", "list", "--store", db)
    assert code == 2 and "key" in err and err.count("\n") == 1
    (keydir / "wrong.key").write_text(os.urandom(32).hex())
    (keydir / "wrong.key").chmod(0o600)
    code, _, err = _run(capsys, "store", "list", "--store", db, "--key-file", keydir / "wrong.key")
    assert code == 2 and "key" in err
    code, out, _ = _run(capsys, "verify", "--store", db, "--key-file", keydir / "store.key", "--id", "colin",
                        photos["colin2"], "--json")
    assert code == 0 and out["match"]


@pytest.mark.bench
def test_bench_identify_small(capsys, tmp_path, lfw):
    root = tmp_path / "people"
    names = sorted(p.name for p in (lfw / "images").iterdir() if len(list(p.glob("*.jpg"))) >= 3)[:12]
    for name in dict.fromkeys([*names, "Aaron_Peirsol", "Abel_Pacheco"]):
        (root / name).mkdir(parents=True, exist_ok=True)
        for f in sorted((lfw / "images" / name).glob("*.jpg"))[:3]:
            os.symlink(f, root / name / f.name)
    code, out, _ = _run(capsys, "bench", "identify", "--images", root, "--gallery-size", "8", "--seeds", "2",
                        "--json")
    assert code == 0
    for key in ("rank1", "dir_at_fpir", "fnir", "fpir", "gallery_size", "probes", "unknown_probes", "no_face"):
        assert key in out
    assert out["gallery_size"] == 8 and set(out["dir_at_fpir"]) == {"0.01", "0.001"}
    assert out["probes"] == 2 * 8 * 2 and out["rank1"] >= 0.9


def test_enrolment_is_idempotent_per_photo(tmp_path, lfw):
    """Re-running enroll-dir stores nothing new: the gallery (and so the 1:N threshold) does not grow."""
    from edge.cli import main

    people = tmp_path / "people"
    for name, files in {"Colin_Powell": ["Colin_Powell_0038.jpg", "Colin_Powell_0040.jpg"],
                        "Tony_Blair": ["Tony_Blair_0006.jpg"]}.items():
        (people / name).mkdir(parents=True)
        for f in files:
            shutil.copy(lfw / "images" / name / f, people / name / f)
    db = tmp_path / "s.db"
    for _ in range(3):
        assert main(["enroll-dir", str(people), "--store", str(db)]) == 0
    with Store(db) as store:
        assert {i.name: i.templates for i in store.identities()} == {"Colin_Powell": {DEFAULT: 2},
                                                                    "Tony_Blair": {DEFAULT: 1}}
        assert len(store.templates(DEFAULT)) == 3
    assert main(["enroll", "--store", str(db), "Tony_Blair", str(people / "Tony_Blair/Tony_Blair_0006.jpg")]) == 0


def test_a_photo_of_someone_else_is_not_added_to_an_identity(tmp_path, lfw, capsys):
    from edge.cli import main

    db = tmp_path / "s.db"
    colin = lfw / "images/Colin_Powell/Colin_Powell_0038.jpg"
    aaron = lfw / "images/Aaron_Eckhart/Aaron_Eckhart_0001.jpg"
    assert main(["enroll", "--store", str(db), "colin", str(colin)]) == 0
    capsys.readouterr()
    assert main(["enroll", "--store", str(db), "colin", str(aaron)]) == 2
    assert "does not match the identity" in capsys.readouterr().out
    # A new identity whose photos are two different people: the second is refused.
    assert main(["enroll", "--store", str(db), "newbie", str(aaron), str(lfw / "images/Tony_Blair/Tony_Blair_0006.jpg")
                 ]) == 0
    with Store(db) as store:
        assert store.identity("colin").templates == {DEFAULT: 1}
        assert store.identity("newbie").templates == {DEFAULT: 1}
    assert main(["enroll", "--store", str(db), "--force", "colin", str(aaron)]) == 0  # the operator insists


def test_adding_a_photo_to_an_identity(tmp_path, lfw, capsys):
    from edge.cli import main

    db = tmp_path / "s.db"
    root = lfw / "images/Colin_Powell"
    assert main(["enroll", "--add", "--store", str(db), "colin", str(root / "Colin_Powell_0038.jpg")]) == 2
    assert "no store" in capsys.readouterr().err  # --add never creates a store or a person
    assert main(["enroll", "--store", str(db), "colin", str(root / "Colin_Powell_0038.jpg")]) == 0
    assert main(["enroll", "--add", "--store", str(db), "colinn", str(root / "Colin_Powell_0040.jpg")]) == 2
    assert "no enrolled identity 'colinn'" in capsys.readouterr().err
    assert main(["enroll", "--add", "--store", str(db), "colin", str(root / "Colin_Powell_0040.jpg")]) == 0
    with Store(db) as store:
        assert store.identity("colin").templates == {DEFAULT: 2}
