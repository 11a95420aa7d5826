"""The dependency direction, read from the source: commands sit on top of the library, never under it.

- `edge/bench/` and the CLI modules hold commands: no other module of edge/ imports them (an evaluation that a
  command and the export stage both need belongs to edge/eval/).
- The device never needs PyTorch: no module of edge/ imports export/ except the CLI's hand-over of the torch
  command groups.
- The device core never needs the admin page's web stack ([web] extra): only edge/web/ (and the commands that
  serve or time it) import it, and the daemon imports edge/web/ only inside a function, when the page is enabled.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EDGE = REPO / "edge"


def _module(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports count too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _is_command(module: str) -> bool:
    return module.startswith(("edge.bench", "edge.cli")) or module.endswith("_cli")


def test_no_library_module_imports_a_command_module() -> None:
    bad = []
    for path in sorted(EDGE.rglob("*.py")):
        module = _module(path)
        if _is_command(module):
            continue
        bad += [f"{module} imports {m}" for m in sorted(_imports(path)) if _is_command(m)]
    assert bad == []


def test_the_device_never_imports_the_export_stage() -> None:
    bad = []
    for path in sorted(EDGE.rglob("*.py")):
        module = _module(path)
        if module.startswith("edge.cli"):
            continue  # hands `facegate export|train|style …` to export/ (the [export] extra)
        bad += [f"{module} imports {m}" for m in sorted(_imports(path)) if m == "export" or m.startswith("export.")]
    assert bad == []


WEB_STACK = ("starlette", "uvicorn", "jinja2", "python_multipart", "multipart", "httpx")


def _top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_the_device_core_never_imports_the_web_stack() -> None:
    bad = []
    for path in sorted(EDGE.rglob("*.py")):
        module = _module(path)
        if module.startswith(("edge.web", "edge.bench.web", "edge.cli")):
            continue
        for m in sorted(_imports(path)):
            if m.split(".")[0] in WEB_STACK:
                bad.append(f"{module} imports {m}")
        bad += [f"{module} imports {m} at module level" for m in sorted(_top_level_imports(path))
                if m == "edge.web" or m.startswith("edge.web.")]
    assert bad == []


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The test above must be able to fail: a function-level import of a command module is found."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from edge.bench.speed import run\n    return run\n")
    assert any(_is_command(m) for m in _imports(sample))
