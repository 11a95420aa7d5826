"""Magenta's arbitrary-style models as known names: `models install magenta --file …`, then `stylize
--style-image` finds them (and names the install command while they are missing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.cli import main
from edge.magenta import FILES
from edge.models.install import GROUPS, KNOWN
from edge.models.registry import Registry, sha256_file
from edge.stylize import load_rgb


@pytest.fixture
def files(data) -> list[Path]:
    folder = data / "models" / "magenta"
    paths = [folder / f.file for f in FILES.values()]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"Magenta files not found under {folder}")
    return paths


@pytest.fixture
def state(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FACEGATE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("FACEGATE_MAGENTA_DIR", raising=False)
    return tmp_path / "state"


def test_install_from_files_then_stylize_finds_them(data, files, state, tmp_path, capsys):
    content = data / "lfw" / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"
    stylize = ["stylize", str(content), str(tmp_path / "out.png"), "--style-image",
               str(data / "style" / "udnie.jpg"), "--size", "200"]
    assert main(stylize) == 2  # not installed yet: the error says how to get them
    err = capsys.readouterr().err
    assert "magenta-predict is not installed" in err and "facegate models install magenta" in err

    args = ["models", "install", "magenta", "--json"]
    for f in files:
        args += ["--file", str(f)]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["installed"] == list(GROUPS["magenta"])
    registry = Registry()
    for name, f in zip(GROUPS["magenta"], files, strict=True):
        m = registry.manifest(name)
        assert m.sha256 == sha256_file(f) == KNOWN[name].sha256 and m.runtime == "litert" and m.task == "stylize"
        assert m.source["upstream"] == KNOWN[name].url and m.extra["upstream_file"] == f.name

    for variant in ("f16", "quantized"):
        assert main([*stylize, "--magenta-variant", variant, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["model"] == f"magenta-{variant}"
        assert load_rgb(tmp_path / "out.png").shape == (200, 200, 3)

    # An altered installed file is refused by name, not run.
    model = Registry().verify(Registry().manifest("magenta-transfer-f16"))
    model.write_bytes(model.read_bytes()[:-10])
    assert main(stylize) == 2
    assert "magenta-transfer-f16" in capsys.readouterr().err


def test_install_refuses_wrong_or_missing_files(data, files, state, capsys):
    assert main(["models", "install", "magenta", "--file", str(files[0])]) == 2
    err = capsys.readouterr().err
    assert "missing magenta-transfer-f16 (style_transfer_f16_384.tflite)" in err
    pth = data / "models" / "minifasnet" / "2.7_80x80_MiniFASNetV2.pth"
    assert main(["models", "install", "magenta-predict", "--file", str(pth)]) == 2
    assert "not the pinned file of magenta-predict" in capsys.readouterr().err
    # One file on its own installs by its own name.
    assert main(["models", "install", "magenta-transfer-quantized", "--file", str(files[2])]) == 0
    assert Registry().names().count("magenta-transfer-quantized") == 1
