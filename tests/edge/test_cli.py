"""The CLI as a user runs it: exit codes, one-line errors, JSON output."""

import json
import subprocess
import sys

import pytest

from edge.cli import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def faces(lfw):
    img = lfw / "images"
    return {"a1": img / "Abel_Pacheco/Abel_Pacheco_0001.jpg", "a4": img / "Abel_Pacheco/Abel_Pacheco_0004.jpg",
            "b1": img / "Aaron_Eckhart/Aaron_Eckhart_0001.jpg"}


def test_compare_exit_codes(capsys, faces, tmp_path):
    code, out, _ = _run(capsys, "compare", faces["a1"], faces["a4"], "--json")
    data = json.loads(out)
    assert code == 0 and data["same_person"] and data["score"] >= data["threshold"]
    code, out, _ = _run(capsys, "compare", faces["a1"], faces["b1"])
    assert code == 1 and "different people" in out
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    code, out, err = _run(capsys, "compare", text, faces["a1"])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "notes.txt" in err and "not a readable image" in err


def test_no_face_and_several_faces(capsys, tmp_path, faces):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(tmp_path / "blank.png")
    code, _, err = _run(capsys, "compare", tmp_path / "blank.png", faces["a1"])
    assert code == 2 and "no face" in err and err.count("\n") == 1
    a, b = Image.open(faces["a1"]), Image.open(faces["b1"])
    collage = Image.new("RGB", (500, 250))
    collage.paste(a, (0, 0))
    collage.paste(b, (250, 0))
    collage.save(tmp_path / "two.png")
    code, _, err = _run(capsys, "compare", tmp_path / "two.png", faces["a1"], "--policy", "single")
    assert code == 2 and "faces found" in err
    code, _, _ = _run(capsys, "compare", tmp_path / "two.png", faces["a1"], "--policy", "largest")
    assert code in (0, 1)


def test_detect_and_embed_json(capsys, faces):
    code, out, _ = _run(capsys, "detect", faces["b1"], "--json")
    data = json.loads(out)
    assert code == 0 and data["width"] == 250 and len(data["faces"]) >= 1
    assert len(data["faces"][0]["landmarks"]) == 5
    code, out, _ = _run(capsys, "embed", faces["b1"], "--json")
    emb = json.loads(out)["embedding"]
    assert code == 0 and len(emb) == 128 and abs(sum(v * v for v in emb) - 1) < 1e-3


def test_models_list_and_verify(capsys):
    code, out, _ = _run(capsys, "models", "list", "--json")
    names = {m["name"] for m in json.loads(out)}
    assert code == 0 and {"yunet", "sface"} <= names
    code, out, _ = _run(capsys, "models", "verify", "--json")
    assert code == 0 and all(r["ok"] for r in json.loads(out))
    code, _, _err = _run(capsys, "models", "verify", "nonexistent")
    assert code == 2


def test_console_script_entry_point(faces):
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "compare", str(faces["a1"]), "/nonexistent.jpg"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no such file" in proc.stderr


@pytest.mark.bench
def test_bench_speed_json(capsys, lfw):
    code, out, _ = _run(capsys, "bench", "speed", "--images", lfw / "images", "--limit", "6", "--json")
    data = json.loads(out)
    assert code == 0 and data["images"] == 6 and data["ours_ms"] > 0
    assert data["ratios"]["naive"] > 0 and set(data["no_face"]) >= {"ours", "naive"}


@pytest.mark.bench
def test_bench_pairs_json_and_plot(capsys, lfw, tmp_path):
    lines = (lfw / "pairs.txt").read_text().splitlines()
    # Two folds of 20 + 20 pairs from the official file, keeping the protocol's shape.
    rows = lines[1:21] + lines[301:321] + lines[601:621] + lines[901:921]
    (tmp_path / "mini.txt").write_text("2\t20\n" + "\n".join(rows) + "\n")
    code, out, _ = _run(capsys, "bench", "pairs", "--images", lfw / "images", "--pairs", tmp_path / "mini.txt",
                        "--json", "--plot", tmp_path / "roc.png")
    data = json.loads(out)
    assert code == 0 and data["folds"] == 2 and data["pairs"] == 80
    for key in ("accuracy", "accuracy_std", "accuracy_sem", "tar_at_far", "impostor_pairs", "no_face",
                "unscored_pairs", "ms"):
        assert key in data
    assert set(data["tar_at_far"]) == {"1e-2", "1e-3"} and data["impostor_pairs"] == 40
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrate_embedder_writes_override(capsys, lfw, tmp_path, monkeypatch):
    monkeypatch.setenv("FACEGATE_STATE_DIR", str(tmp_path / "state"))
    lines = (lfw / "pairsDevTrain.txt").read_text().splitlines()
    (tmp_path / "dev.txt").write_text("30\n" + "\n".join(lines[1:31] + lines[1101:1131]) + "\n")
    code, out, _ = _run(capsys, "calibrate", "embedder", "--model", "sface", "--images", lfw / "images",
                        "--pairs", tmp_path / "dev.txt", "--far", "0.01", "--json")
    entries = json.loads(out)
    entry = entries["verify"]
    assert code == 0
    prov = entry["provenance"]
    assert prov["genuine_pairs"] == 30 and prov["impostor_source"].startswith("all cross-identity")
    assert prov["impostor_pairs"] > 30 and prov["far_measured"] <= 0.01
    override = json.loads((tmp_path / "state" / "models" / "overrides" / "sface.json").read_text())
    assert override["thresholds"]["verify"]["value"] == entry["value"]
    tail = entries["identify"]["tail"]
    assert tail and all(a[0] > b[0] and a[1] <= b[1] for a, b in zip(tail, tail[1:], strict=False))


def test_verify_and_identify_with_a_verifier_head(capsys, faces, tmp_path, monkeypatch):
    """--verifier: enrolment stores the head's embedders, 1:1 and 1:N are scored by the head (logits)."""
    pytest.importorskip("onnx")
    from tests.edge.test_daemon import _two_embedder_head

    monkeypatch.setenv("FACEGATE_STATE_DIR", str(tmp_path))
    _two_embedder_head(tmp_path / "models")
    capsys.readouterr()
    db = tmp_path / "s.db"
    assert _run(capsys, "enroll", "abel", faces["a1"], "--verifier", "head-2e", "--store", db)[0] == 0
    code, out, _ = _run(capsys, "verify", "--id", "abel", faces["a4"], "--verifier", "head-2e", "--store", db,
                        "--json")
    data = json.loads(out)
    assert code == 0 and data["match"] and data["model"] == "head-2e" and data["score"] > 1.0
    code, out, _ = _run(capsys, "identify", faces["b1"], "--verifier", "head-2e", "--store", db, "--json")
    assert code == 1 and json.loads(out)["model"] == "head-2e"
    code, out, _ = _run(capsys, "identify", faces["a4"], "--verifier", "head-2e", "--store", db, "--json")
    assert code == 0 and json.loads(out)["identity"] == "abel"
    # Enrolled without the head: its second embedder's templates are missing, and the error says how to fix it.
    assert _run(capsys, "enroll", "aaron", faces["b1"], "--store", db)[0] == 0
    code, out, err = _run(capsys, "verify", "--id", "aaron", faces["b1"], "--verifier", "head-2e", "--store", db)
    assert code == 2 and "reembed" in err and out == ""


@pytest.mark.parametrize("args", [["--fpir", "2"], ["--fpir", "0"], ["--fpir", "-0.1"], ["--fpir", "nan"],
                                  ["--top", "-1"], ["--threads", "-1"], ["--min-face", "inf"]])
def test_out_of_range_options_are_errors(tmp_path, args):
    from edge.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["identify", "--store", str(tmp_path / "s.db"), str(tmp_path / "x.jpg"), *args])
    assert exc.value.code == 2


def test_read_commands_refuse_a_missing_store(tmp_path, lfw, capsys):
    from edge.cli import main

    image = lfw / "images/Colin_Powell/Colin_Powell_0038.jpg"
    for argv in (["identify", "--store", str(tmp_path / "typo.db"), str(image)],
                 ["verify", "--store", str(tmp_path / "typo.db"), "--id", "colin", str(image)],
                 ["store", "list", "--store", str(tmp_path / "typo.db")]):
        assert main(argv) == 2
        assert "no store at" in capsys.readouterr().err
    assert not (tmp_path / "typo.db").exists()

    # An empty file (a truncated copy, a wrong name) is not an empty store: refused, and left as it was.
    (tmp_path / "empty.db").write_bytes(b"")
    for argv in (["identify", "--store", str(tmp_path / "empty.db"), str(image)],
                 ["verify", "--store", str(tmp_path / "empty.db"), "--id", "colin", str(image)],
                 ["store", "list", "--store", str(tmp_path / "empty.db")]):
        assert main(argv) == 2
        assert "is an empty file, not a facegate store" in capsys.readouterr().err
    assert (tmp_path / "empty.db").stat().st_size == 0


def test_the_machine_s_state_and_odd_configs_are_one_line_errors(tmp_path, lfw, capsys, monkeypatch):
    """A file where a folder should be, an existing file as an output folder, a config nested hundreds deep:
    exit 2 with one line naming the path, never a traceback."""
    from edge.cli import main

    taken = tmp_path / "taken"
    taken.write_text("")
    assert main(["hub", "keygen", "--out", str(taken), "--site", "a"]) == 2
    err = capsys.readouterr().err
    assert f"{taken}: File exists" in err and "Traceback" not in err
    monkeypatch.setenv("FACEGATE_STATE_DIR", str(taken))  # the state folder is a file
    assert main(["detect", str(lfw / "images/Colin_Powell/Colin_Powell_0038.jpg")]) == 2
    err = capsys.readouterr().err
    assert "Not a directory" in err and str(taken) in err and "Traceback" not in err
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 600 + "]" * 600 + "\n")
    assert main(["doctor", "--config", str(deep), "--no-camera", "--no-broker"]) == 2
    assert "nested too deeply" in capsys.readouterr().err


def test_a_model_that_is_not_an_embedder_is_named_not_loaded(lfw, tmp_path, capsys):
    from edge.cli import main

    image = str(lfw / "images/Colin_Powell/Colin_Powell_0038.jpg")
    for argv, task in ((["embed", image, "--model", "yunet"], "'detect'"),
                       (["embed", image, "--model", "fused"], "'fusion'"),
                       (["embed", image, "--model", "style-starry_night"], "'stylize'"),
                       (["explain", "match", image, image, "--out", str(tmp_path / "o.png"), "--model", "yunet"],
                        "'detect'")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"is a {task} model, not an embedder" in err and "Traceback" not in err
