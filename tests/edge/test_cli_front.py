"""The CLI front: every reporting command takes --json (the parser is walked, not listed by hand), exit codes
are 0/1/2, and the commands read the daemon's configuration file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from edge.cli import build_parser, main


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaves(child, (*path, name))


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def test_every_command_takes_json() -> None:
    from edge.cli import TORCH_GROUPS

    leaves = [(p, q) for p, q in _leaves(build_parser()) if p[0] not in TORCH_GROUPS]
    assert len(leaves) > 25
    missing = [" ".join(p) for p, q in leaves if "--json" not in _options(q)]
    assert missing == []


def test_every_torch_command_takes_json() -> None:
    pytest.importorskip("torch")
    from export.cli import build_parser as export_parser

    leaves = list(_leaves(export_parser()))
    assert len(leaves) > 5
    missing = [" ".join(p) for p, q in leaves if "--json" not in _options(q)]
    assert missing == []


def test_the_walk_sees_a_missing_json() -> None:
    """The walk must be able to fail."""
    parser = argparse.ArgumentParser()
    parser.add_subparsers().add_parser("quiet")
    assert [p for p, q in _leaves(parser) if "--json" not in _options(q)] == [("quiet",)]


def test_the_cli_reads_the_daemons_configuration(tmp_path: Path, lfw: Path, capsys) -> None:
    image = lfw / "images/Colin_Powell/Colin_Powell_0038.jpg"
    store = tmp_path / "s.db"
    assert main(["enroll", "--store", str(store), "colin", str(image)]) == 0
    conf = tmp_path / "facegate.toml"
    conf.write_text(f'[store]\npath = "{store}"\n[decision]\nfpir = 0.05\n')
    capsys.readouterr()
    assert main(["identify", "--config", str(conf), str(image), "--json"]) == 0  # the store from the file
    out = json.loads(capsys.readouterr().out)
    assert out["fpir_target"] == 0.05 and out["identity"] == "colin"
    assert main(["identify", "--config", str(conf), str(image), "--fpir", "0.01", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fpir_target"] == 0.01  # the command line wins
    conf.write_text(f'[store]\npath = "{store}"\n[models]\nembedder = "sfacee"\n')
    assert main(["identify", "--config", str(conf), str(image)]) == 2
    assert "sfacee" in capsys.readouterr().err


def test_store_options_before_or_after_the_action(tmp_path: Path, lfw: Path, capsys) -> None:
    store = tmp_path / "s.db"
    assert main(["enroll", "--store", str(store), "colin", str(lfw / "images/Colin_Powell/Colin_Powell_0038.jpg")]) == 0
    capsys.readouterr()
    assert main(["store", "--store", str(store), "list"]) == 0
    before = capsys.readouterr().out
    assert main(["store", "list", "--store", str(store)]) == 0
    assert capsys.readouterr().out == before and before.startswith("colin") and "{" not in before
    backup = tmp_path / "b.db"
    assert main(["store", "backup", str(backup), "--store", str(store)]) == 0
    assert main(["store", "backup", str(backup), "--store", str(store)]) == 2  # no silent overwrite
    assert "--force" in capsys.readouterr().err
    assert main(["store", "backup", str(backup), "--force", "--store", str(store)]) == 0
