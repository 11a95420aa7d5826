"""Resolve a model name to a verified, runtime-ready file.

Manifests come from four places, later ones winning: the built-in JSON files next to this module, the style
bundles shipped as package data (`styles/<name>/manifest.json`, their model files beside them), bundles
installed into the model directory (`<model_dir>/<name>/manifest.json`), and overrides
(`<model_dir>/overrides/<name>.json`, a partial manifest merged key by key — how calibration records a
threshold without touching site-packages). Prepared graphs are cached in `<model_dir>/prepared/` with a
sidecar holding their own sha256, so a corrupted cache is detected and rebuilt; a source that is not ONNX
(dlib's .dat) is converted there too, by the converter its manifest's `prepare` list begins with.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from edge.atomic import atomic_write_bytes
from edge.errors import ModelError
from edge.models.manifest import Manifest, check_relative
from edge.paths import model_dir as default_model_dir
from edge.runtime import Runtime, open_runtime

BUILTIN_DIR = Path(__file__).with_name("builtin")
STYLES_DIR = Path(__file__).with_name("styles")  # style nets trained by this project (export/style/bundle.py)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# What an override may change: the operating points (`facegate calibrate`), which embedder is the default,
# whether an embedder also embeds the mirror image (flip_average; a fusion refuses a member whose flag differs
# from its calibration's), and for a score fusion its statistics (`facegate calibrate fusion` rewrites them with
# its thresholds). Never the file, its hash, where it comes from, how it is prepared or how its input is
# scaled: an override swapping those swaps the model (a constant embedder, a std of 1e30) and every face
# matches every other.
OVERRIDABLE = frozenset({"thresholds", "default", "flip_average"})
OVERRIDABLE_FUSION = OVERRIDABLE | {"extra"}


def _check_override_thresholds(partial: Any, path: Path, task: Any = None) -> None:
    """An override may set only the keys of OVERRIDABLE (a fusion's `extra` too), and one that sets a
    threshold's value or tail must say where it came from in the same entry: merged over the shipped manifest,
    it would otherwise inherit the shipped calibration's provenance and look measured. `facegate calibrate`
    always writes one."""
    if not isinstance(partial, dict):
        raise ModelError(f"{path}: an override must be a JSON object")
    allowed = OVERRIDABLE_FUSION if task == "fusion" else OVERRIDABLE
    refused = sorted(set(partial) - allowed)
    if refused:
        raise ModelError(f"{path}: an override may set only {', '.join(sorted(allowed))}; it sets "
                         f"{', '.join(refused)} (a different model file, source, preparation or input is a new "
                         f"model: install it as a bundle under its own name)")
    thresholds = partial.get("thresholds", {})
    if not isinstance(thresholds, dict):
        raise ModelError(f"{path}: thresholds must be an object")
    for key, t in thresholds.items():
        if isinstance(t, dict) and ({"value", "tail"} & set(t)) and not t.get("provenance"):
            raise ModelError(f"{path}: thresholds.{key} sets a value without its provenance (where it was "
                             f"measured); recalibrate with `facegate calibrate`, or remove the entry")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _builtin_sources() -> list[Path]:
    return sorted(BUILTIN_DIR.glob("*.json")) + sorted(STYLES_DIR.glob("*/manifest.json"))


def _read_manifests(sources: list[Path]) -> dict[str, tuple[dict[str, Any], Path]]:
    """name → (the manifest's JSON object, its file), later files winning (a bundle over a built-in)."""
    found: dict[str, tuple[dict[str, Any], Path]] = {}
    for path in sources:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{path}: cannot read manifest ({exc})") from None
        if not isinstance(data, dict):
            raise ModelError(f"{path}: a manifest must be a JSON object, not {type(data).__name__}")
        found[str(data.get("name", path.stem))] = (data, path)
    return found


def _inside(folder: Path, relative: str, name: str) -> Path:
    """folder / relative, refused unless it stays inside folder: the manifest's own rule (check_relative), again
    here because a manifest built by hand (Manifest(...)) never went through it, and Path(pkg) / "/abs" drops
    pkg."""
    try:
        check_relative(relative, "source path")
    except ModelError:
        raise ModelError(f"model {name!r}: source path {relative!r} leaves its folder {folder}") from None
    return folder / relative


class PackageMissingError(ModelError):
    """A model's source package is absent. `optional`: its manifest names it as an optional package (not a
    device dependency), so a device without it simply does not offer that model."""

    def __init__(self, message: str, optional: bool = False) -> None:
        super().__init__(message)
        self.optional = optional


class Registry:
    def __init__(self, model_dir: Path | None = None) -> None:
        self.model_dir = Path(model_dir) if model_dir else default_model_dir()

    # -- manifests ---------------------------------------------------------------------------------------
    @staticmethod
    def builtin_names() -> frozenset[str]:
        """The names of the models shipped with facegate (built-in manifests and style bundles)."""
        return frozenset(_read_manifests(_builtin_sources()))

    def _raw_manifests(self) -> dict[str, tuple[dict[str, Any], Path]]:
        sources = _builtin_sources()
        if self.model_dir.is_dir():
            sources += sorted(self.model_dir.glob("*/manifest.json"))
        return _read_manifests(sources)

    def names(self) -> list[str]:
        return sorted(self._raw_manifests())

    def manifest(self, name: str) -> Manifest:
        raw = self._raw_manifests()
        if name not in raw:
            raise ModelError(f"unknown model {name!r} (known: {', '.join(sorted(raw))})")
        data, origin = raw[name]
        override = self.override_path(name)
        if override.is_file():
            try:
                partial = json.loads(override.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ModelError(f"{override}: invalid JSON ({exc})") from None
            _check_override_thresholds(partial, override, data.get("task"))
            data = _merge(data, partial)
            origin = override
        return Manifest.from_dict(data, origin=str(origin))

    def loosened_thresholds(self, name: str) -> list[dict[str, Any]]:
        """The thresholds an override sets below the shipped manifest's (each admits more people), with both
        values, the override file and one sentence (`text`) that `facegate doctor` shows and the daemon logs at
        start."""
        raw = self._raw_manifests()
        override = self.override_path(name)
        if name not in raw or not override.is_file():
            return []
        shipped = Manifest.from_dict(raw[name][0], origin=str(raw[name][1])).thresholds
        out = []
        for key, t in self.manifest(name).thresholds.items():
            base = shipped.get(key)
            if base is not None and t.value < base.value:
                command = t.provenance.get("command")
                out.append({"model": name, "threshold": key, "value": t.value, "shipped": base.value,
                            "file": str(override), "command": command,
                            "text": f"model {name}: threshold {key} {t.value:.4g} is below the shipped "
                                    f"{base.value:.4g} (set by {override}"
                                    + (f", from `{command}`" if command else "") + "): it accepts more faces"})
        return out

    def embedder_manifest(self, name: str) -> Manifest:
        """The manifest of an embedder; a detector, style net or fusion named where an embedder belongs is an
        error that says what it is (the scorer factory and the pipeline both ask here)."""
        m = self.manifest(name)
        if m.task != "embed":
            raise ModelError(f"model {name!r} is a {m.task!r} model, not an embedder"
                             + (" (a fusion scores its members: models.fusion / --fusion)" if m.task == "fusion"
                                else ""))
        return m

    def default_embedder(self) -> str:
        """The embedder used where none is named: the one whose manifest says "default" (the int8 twin of SFace
        as shipped, chosen on LFW View 1; naming "sface" is the switch back to fp32), else "sface"."""
        marked = [n for n, (data, _) in self._raw_manifests().items()
                  if data.get("task") == "embed" and self.manifest(n).default]  # overrides included
        if len(marked) > 1:
            raise ModelError(f"several embedders are marked default: {', '.join(sorted(marked))} "
                             f"(unset all but one with an override: {{\"default\": false}})")
        return marked[0] if marked else "sface"

    def override_path(self, name: str) -> Path:
        return self.model_dir / "overrides" / f"{name}.json"

    def write_override(self, name: str, partial: dict[str, Any]) -> Path:
        """Merge `partial` into the model's override file (validated against the full manifest first)."""
        path = self.override_path(name)
        data, origin = self._raw_manifests()[name]
        _check_override_thresholds(partial, path, data.get("task"))
        current = json.loads(path.read_text()) if path.is_file() else {}
        merged = _merge(current, partial)
        _check_override_thresholds(merged, path, data.get("task"))
        Manifest.from_dict(_merge(data, merged), origin=str(origin))  # refuse an override that breaks it
        atomic_write_bytes(path, (json.dumps(merged, indent=2) + "\n").encode())
        return path

    # -- files -------------------------------------------------------------------------------------------
    def source_path(self, m: Manifest) -> Path:
        src = m.source
        if "package" in src:
            # Found without importing the package: a data package's __init__ may need more than its files
            # (face_recognition_models' imports pkg_resources, which setuptools 81 removed).
            try:
                spec = importlib.util.find_spec(src["package"])
            except (ImportError, ValueError):
                spec = None
            if spec is None or not spec.submodule_search_locations:
                hint = src.get("optional_package", src["package"])
                raise PackageMissingError(f"model {m.name!r}: its package {src['package']!r} is not installed "
                                          f"(pip install {hint})", optional="optional_package" in src)
            return _inside(Path(next(iter(spec.submodule_search_locations))), src["path"], m.name)
        if "file" in src:
            return _inside(self.model_dir / m.name, src["file"], m.name)
        raise ModelError(f"model {m.name!r}: source must name a package or a file, got {sorted(src)}")

    def verify(self, m: Manifest) -> Path:
        """The source file, after checking it exists and matches the manifest's sha256 (a fusion: its members)."""
        if m.task == "fusion":
            from edge.match.fusion import Fusion

            fusion = Fusion(m)
            fusion.check_members(self)
            for member in fusion.members:
                self.verify(self.manifest(member))
            return BUILTIN_DIR
        path = self.source_path(m)
        if not path.is_file():
            raise ModelError(f"model {m.name!r}: file {path} is missing (expected sha256 {m.sha256})")
        actual = sha256_file(path)
        if actual != m.sha256:
            raise ModelError(f"model {m.name!r}: file {path} has sha256 {actual}, expected {m.sha256}")
        return path

    def runtime_file(self, m: Manifest) -> Path:
        """The file the runtime loads: the verified source, or its prepared copy (built once, cached)."""
        source = self.verify(m)
        if not m.prepare or m.task == "fusion":
            return source
        from edge.models.prepare import prepare_file, steps_key

        out = self.model_dir / "prepared" / f"{m.name}-{m.sha256[:16]}-{steps_key(m.prepare, m.quantize)}.onnx"
        sidecar = out.with_suffix(".sha256")
        if out.is_file() and sidecar.is_file() and sidecar.read_text().strip() == sha256_file(out):
            return out
        model = prepare_file(source, m.prepare, m.quantize)
        data = model.SerializeToString()
        atomic_write_bytes(out, data)
        atomic_write_bytes(sidecar, (hashlib.sha256(data).hexdigest() + "\n").encode())
        return out

    def open(self, name: str, threads: int = 1) -> tuple[Runtime, Manifest]:
        m = self.manifest(name)
        return open_runtime(m.runtime, self.runtime_file(m), threads=threads), m
