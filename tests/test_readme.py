"""The README is for people who have never seen the project: two set-up commands, a glossary of the figures'
terms, no build history or internal targets, and every file it points to exists."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def test_set_up_has_exactly_two_commands():
    blocks = re.findall(r"```sh\n(.*?)```", section("Set up"), flags=re.S)
    assert [b.strip() for b in blocks] == ["python3 -m pip install -e '.[demo]' && facegate demo",
                                           "python3 -m pip install -e '.[dev,export]' && python3 -m pytest -q"]


def test_the_glossary_defines_every_term_the_figures_use():
    glossary = section("Glossary")
    for term in ("TAR", "FAR", "DIR", "FPIR", "FNIR", "APCER", "BPCER", "ACER", "View 1", "View 2", "sem"):
        assert re.search(rf"\*\*[^*]*\b{re.escape(term)}\b[^*]*\*\*", glossary), term


def test_no_build_history_or_internal_targets():
    for phrase in ("session", "embedded defaults", "'s bundle", "98.5", "the main job", "issue #", "target:"):
        assert phrase not in README, phrase


def test_every_path_it_names_exists():
    for path in set(re.findall(r"`((?:docs|deploy|systemd|edge|export)/[\w./-]+)`", README)):
        assert (REPO / path).exists(), path
    for path in re.findall(r"\]\(((?:docs|deploy)/[^)]+)\)", README):
        assert (REPO / path).exists(), path
