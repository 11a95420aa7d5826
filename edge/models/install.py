"""`facegate models install`: put a bundle into the model directory, hash-checked.

A source is one of:
- a known name (KNOWN): the upstream file at a pinned URL with a pinned sha256, or, with `--file PATH`, the
  same file already on disk (an air-gapped site's copy; its sha256 must be the pinned one). Published files
  that are not bundles are turned into one by the name's recipe, with the device dependencies alone
  (MiniFASNet's PyTorch state dicts are read without PyTorch and written as ONNX; Magenta's TFLite files get
  a manifest);
- a known group (GROUPS): every member's file, e.g. `minifasnet` = both MiniFASNet nets and their fusion;
- a URL of a bundle archive (.tar.gz, .tgz, .tar or .zip), downloaded with a progress bar; --sha256 is
  required so the download can be checked;
- a local bundle folder or archive (what `facegate export …` writes), or a known upstream file by its hash.

A bundle is `manifest.json` + the model file it names (+ `parity.json`). The model file must match the
manifest's sha256. Installation is atomic: the bundle appears complete in `<model_dir>/<name>/` or not at all.
Installing a MiniFASNet member also (re)writes the fused liveness bundle once both members are there
(edge/liveness/minifasnet.py), so the CLI and the daemon find the same check.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.atomic import staged_folder
from edge.errors import ModelError
from edge.models.manifest import Manifest
from edge.models.registry import Registry, sha256_file

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
BUNDLE_FILES = ("manifest.json", "parity.json")
CHUNK = 1 << 16


@dataclass(frozen=True)
class Known:
    url: str
    sha256: str
    # "module:function" that turns the downloaded file into bundles in a model directory, for upstream
    # files that are weights rather than bundles; called as function(weights_path, model_dir) -> [names].
    recipe: str | None = None
    note: str = ""


_SILENT_FACE = ("https://raw.githubusercontent.com/minivision-ai/Silent-Face-Anti-Spoofing/"
                "b6d5f04ad78778917853b25c778acef6d5626d15/resources/anti_spoof_models/")
# TensorFlow Lite's style-transfer example models (Apache-2.0), as the TensorFlow Lite style-transfer overview
# page linked them. The pins are the sha256 of the copies in ../shared/models/magenta (fetched from these URLs
# by terryky/tflite_gles_app; not re-downloaded here, so unverified against the URLs); see docs/models.md.
_TFLITE_STYLE = "https://storage.googleapis.com/download.tensorflow.org/models/tflite/arbitrary_style_transfer/"
_MINIFASNET = "edge.liveness.minifasnet_graph:install_from_weights"
_MAGENTA = "edge.magenta:install_from_file"
KNOWN: dict[str, Known] = {
    "minifasnet-v2": Known(_SILENT_FACE + "2.7_80x80_MiniFASNetV2.pth",
                           "a5eb02e1843f19b5386b953cc4c9f011c3f985d0ee2bb9819eea9a142099bec0",
                           recipe=_MINIFASNET, note="MiniFASNetV2 anti-spoofing (2.7× crop), Apache-2.0"),
    "minifasnet-v1se": Known(_SILENT_FACE + "4_0_0_80x80_MiniFASNetV1SE.pth",
                             "84ee1d37d96894d5e82de5a57df044ef80a58be2b218b5ed7cdfd875ec2f5990",
                             recipe=_MINIFASNET, note="MiniFASNetV1SE anti-spoofing (4.0× crop), Apache-2.0"),
    "magenta-predict": Known(_TFLITE_STYLE + "style_predict_quantized_256.tflite",
                             "203dbd6a09da1091ab7e48e8b101aef8c2d81438ad047a5cb150747a977134c1",
                             recipe=_MAGENTA, note="Magenta arbitrary-style predictor (int8), Apache-2.0"),
    "magenta-transfer-f16": Known(_TFLITE_STYLE + "style_transfer_f16_384.tflite",
                                  "c60cff7395544eda1f0915d6dddaedd8ed868cefe8ec6c5ed220ba801f120303", recipe=_MAGENTA,
                                  note="Magenta arbitrary-style transformer (float16), Apache-2.0"),
    "magenta-transfer-quantized": Known(_TFLITE_STYLE + "style_transfer_quantized_384.tflite",
                                        "1972f7d438b6e9ff326c466db1a8005a8a0efa0274886bbd52f91dc8be2f4f04",
                                        recipe=_MAGENTA,
                                        note="Magenta arbitrary-style transformer (int8), Apache-2.0"),
}
# Names that install several known files at once.
GROUPS: dict[str, tuple[str, ...]] = {
    "minifasnet": ("minifasnet-v2", "minifasnet-v1se"),  # both nets; installing them writes the fused check
    "magenta": ("magenta-predict", "magenta-transfer-f16", "magenta-transfer-quantized"),
}


def _check_sha(value: str | None) -> str | None:
    if value is None:
        return None
    v = value.strip().lower()
    if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise ModelError(f"--sha256 must be 64 hex digits, not {value!r}")
    return v


def mirrored(url: str, mirror: str | None) -> str:
    """The URL with everything before the file name replaced by `mirror` (a site's own copy of the files)."""
    if not mirror:
        return url
    return mirror.rstrip("/") + "/" + url.rsplit("/", 1)[-1]


def download(url: str, dest: Path, sha256: str | None, progress: bool = True, timeout: float = 60.0) -> Path:
    """Stream `url` to `dest`, checking its sha256 before the file appears; a mismatch leaves nothing."""
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https"):
        raise ModelError(f"{url}: only http and https downloads are supported")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                resp = urllib.request.urlopen(url, timeout=timeout)  # scheme checked above
            except OSError as exc:
                raise ModelError(f"{url}: download failed ({exc})") from None
            with resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                from tqdm import tqdm

                with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr,
                          disable=not progress or None) as bar:
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        h.update(chunk)
                        bar.update(len(chunk))
        actual = h.hexdigest()
        if sha256 and actual != sha256:
            raise ModelError(f"{url}: downloaded file has sha256 {actual}, expected {sha256}")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def fetch_known(name: str, cache_dir: Path, progress: bool = True, mirror: str | None = None) -> Path:
    """The upstream file of a known name in `cache_dir`, downloaded once and re-checked on every use."""
    known = KNOWN[name]
    path = cache_dir / known.url.rsplit("/", 1)[-1]
    if path.is_file() and sha256_file(path) == known.sha256:
        return path
    return download(mirrored(known.url, mirror), path, known.sha256, progress=progress)


def staging_dir(model_dir: Path) -> Path:
    """Where bundles are assembled before the rename that installs them.

    Two levels below the model directory, so the registry's `<model_dir>/*/manifest.json` never sees a
    half-copied bundle, even one a crash left behind; on the same file system, so the rename is atomic.
    """
    path = Path(model_dir) / ".staging"
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- bundles ----------------------------------------------------------------------------------------------------
def _safe_extract(archive: Path, dest: Path) -> None:
    """Unpack refusing absolute paths, '..', links and devices: an archive cannot write outside `dest`."""
    def check(member: str) -> None:
        p = Path(member)
        if p.is_absolute() or ".." in p.parts:
            raise ModelError(f"{archive}: refusing archive member {member!r}")

    name = archive.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            for n in z.namelist():
                check(n)
            z.extractall(dest)
        return
    try:
        with tarfile.open(archive) as t:
            for m in t.getmembers():
                check(m.name)
                if not (m.isfile() or m.isdir()):
                    raise ModelError(f"{archive}: refusing archive member {m.name!r} (not a file)")
            t.extractall(dest, filter="data")
    except tarfile.TarError as exc:
        raise ModelError(f"{archive}: not a readable archive ({exc})") from None


def _find_bundle(root: Path) -> Path:
    """The folder holding manifest.json: the root itself or its single top-level folder."""
    if (root / "manifest.json").is_file():
        return root
    found = [p.parent for p in root.glob("*/manifest.json")]
    if len(found) != 1:
        raise ModelError(f"expected one bundle (a manifest.json) in the archive, found {len(found)}")
    return found[0]


def install_bundle(bundle: Path, model_dir: Path, replace_builtin: bool = False,
                   model_sha256: str | None = None) -> str:
    """Check a bundle folder and copy it to `<model_dir>/<name>/` atomically; returns the model's name.

    A bundle named like a built-in model (sface-int8, yunet, …) would be used in its place by every command: it is
    refused unless `replace_builtin` (`models install --replace-builtin`: an exported variant meant to take the
    built-in's place). `model_sha256`: the hash the model file inside must have (`--sha256` given for a folder)."""
    try:
        data = json.loads((bundle / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{bundle}: cannot read manifest.json ({exc})") from None
    m = Manifest.from_dict(data, origin=str(bundle / "manifest.json"))
    if m.task == "liveness" and m.extra.get("members"):
        # A fusion of other bundles: written afresh for the members installed here, never copied (a copy
        # could pin members this directory lacks, e.g. the TFLite ones of a workstation's export).
        from edge.liveness.minifasnet import install_fused

        return install_fused(bundle, model_dir)
    src = m.source.get("file")
    if "package" in m.source or not src or Path(src).is_absolute() or ".." in Path(src).parts or "/" in src:
        raise ModelError(f"{bundle}: a bundle's source must be {{'file': NAME}} inside the bundle, got {m.source}")
    if m.name in ("", ".", "..", "prepared", "overrides", "downloads", ".staging") or "/" in m.name:
        raise ModelError(f"{bundle}: {m.name!r} cannot be a bundle name")
    if m.name in Registry.builtin_names() and not replace_builtin:
        raise ModelError(f"{bundle}: {m.name!r} is the name of a built-in model; a bundle of that name would be "
                         f"used in its place — rename it, or give --replace-builtin if that is what you mean")
    model = bundle / src
    if not model.is_file():
        raise ModelError(f"{bundle}: model file {src} is missing")
    actual = sha256_file(model)
    if actual != m.sha256:
        raise ModelError(f"{bundle}: {src} has sha256 {actual}, but its manifest says {m.sha256}")
    if model_sha256 is not None and actual != model_sha256:
        raise ModelError(f"{bundle}: {src} has sha256 {actual}, but --sha256 says {model_sha256}; nothing installed")
    _test_load(m, model, bundle)
    with staged_folder(model_dir / m.name, staging_dir(model_dir)) as tmp:
        for name in {src, *BUNDLE_FILES}:
            if (bundle / name).is_file():
                shutil.copyfile(bundle / name, tmp / name)
    return m.name


def _test_load(m: Manifest, model: Path, bundle: Path) -> None:
    """Load the model as the device will (prepared, then opened by its runtime) before it is installed: a file
    that is not a model is refused here, not by every later command."""
    try:
        if m.runtime == "litert":
            if model.read_bytes()[4:8] != b"TFL3":  # the FlatBuffer identifier of every .tflite file
                raise ModelError("not a TFLite file")
            return
        from edge.models.prepare import prepare_file
        from edge.runtime import open_runtime

        if m.prepare:
            open_runtime(m.runtime, prepare_file(model, m.prepare, m.quantize).SerializeToString())  # type: ignore[arg-type]
        else:
            open_runtime(m.runtime, model)
    except ModelError as exc:
        raise ModelError(f"{bundle}: {model.name} cannot be loaded as {m.name!r} ({exc}); nothing installed") \
            from None


def install_model_file(model_file: Path, manifest: dict[str, Any], model_dir: Path,
                       parity: dict[str, Any] | None = None) -> str:
    """Make a bundle of one model file and its manifest (file, sha256 and source.file filled in here) and
    install it: how recipes turn an upstream file into an installed model."""
    model_file = Path(model_file)
    with tempfile.TemporaryDirectory(dir=staging_dir(model_dir), prefix=f"{manifest['name']}.build.") as tmp:
        folder = Path(tmp)
        fname = "model" + model_file.suffix.lower()
        shutil.copyfile(model_file, folder / fname)
        data = {**manifest, "file": fname, "sha256": sha256_file(folder / fname)}
        data["source"] = {**dict(manifest.get("source") or {}), "file": fname}
        (folder / "manifest.json").write_text(json.dumps(data, indent=2) + "\n")
        if parity is not None:
            (folder / "parity.json").write_text(json.dumps({"name": manifest["name"], **parity}, indent=2) + "\n")
        return install_bundle(folder, Path(model_dir))


def _install_file(path: Path, model_dir: Path, progress: bool, mirror: str | None, replace_builtin: bool = False,
                  model_sha256: str | None = None) -> list[str]:
    if path.is_dir():
        return [install_bundle(_find_bundle(path), model_dir, replace_builtin, model_sha256)]
    if path.name.lower().endswith(ARCHIVE_SUFFIXES):
        with tempfile.TemporaryDirectory(dir=staging_dir(model_dir)) as tmp:
            _safe_extract(path, Path(tmp))
            return [install_bundle(_find_bundle(Path(tmp)), model_dir, replace_builtin)]
    name = known_name_of(path)
    if name is not None:  # an upstream file fetched by hand: the same as installing its name
        return _from_weights(name, path, model_dir)
    raise ModelError(f"{path}: not a bundle (folder or .tar.gz/.tgz/.tar/.zip archive) nor a known upstream "
                     f"file; `facegate export …` writes bundles")


def known_name_of(path: Path) -> str | None:
    """The known name whose pinned file `path` is (by sha256), if any."""
    digest = sha256_file(path)
    return next((name for name, known in KNOWN.items() if known.sha256 == digest), None)


def _from_weights(name: str, weights: Path, model_dir: Path) -> list[str]:
    recipe = KNOWN[name].recipe
    if recipe is None:
        return [install_bundle(_find_bundle(weights), model_dir)]
    module, func = recipe.split(":")
    return list(getattr(importlib.import_module(module), func)(weights, model_dir))


def _given_files(source: str, files: list[Path]) -> dict[str, Path]:
    """`--file` paths matched to the members of the known name or group `source`, each checked by its pin."""
    members = GROUPS.get(source, (source,))
    found: dict[str, Path] = {}
    for f in files:
        f = Path(f).expanduser()
        if not f.is_file():
            raise ModelError(f"--file {f}: no such file")
        name = known_name_of(f)
        if name not in members:
            expected = ", ".join(f"{KNOWN[m].url.rsplit('/', 1)[-1]} (sha256 {KNOWN[m].sha256[:12]}…)"
                                 for m in members)
            raise ModelError(f"--file {f}: sha256 {sha256_file(f)} is not the pinned file of {source} "
                             f"(expected {expected})")
        found[name] = f
    missing = [m for m in members if m not in found]
    if missing:
        raise ModelError(f"{source}: give --file for each of its files; missing "
                         + ", ".join(f"{m} ({KNOWN[m].url.rsplit('/', 1)[-1]})" for m in missing))
    return found


def _after_install(names: list[str], model_dir: Path) -> list[str]:
    """Models that depend on what was just installed: the fused liveness check once both nets are there."""
    from edge.liveness.minifasnet import refresh_fused

    return names + [n for n in refresh_fused(model_dir, names) if n not in names]


def install(source: str, sha256: str | None = None, model_dir: Path | None = None, progress: bool = True,
            mirror: str | None = None, files: list[Path] | tuple[Path, ...] = (),
            replace_builtin: bool = False) -> list[str]:
    """Install `source` (known name or group, URL or local path) into the model directory; returns the
    installed names. `files`: for a known name or group, its upstream files already on disk (no download).
    `sha256`: of the download, the archive or file given, or (a bundle folder) of the model file inside it.
    `replace_builtin`: let a bundle take a built-in model's name (install_bundle)."""
    model_dir = Path(model_dir) if model_dir else Registry().model_dir
    model_dir.mkdir(parents=True, exist_ok=True)
    sha256 = _check_sha(sha256)
    mirror = mirror or os.environ.get("FACEGATE_MODEL_MIRROR")
    if files and source not in KNOWN and source not in GROUPS:
        raise ModelError(f"--file goes with a known name ({', '.join([*GROUPS, *KNOWN])}), not {source!r}; "
                         "to install a bundle or an upstream file by path, give the path as the source")
    if source in KNOWN or source in GROUPS:
        members = GROUPS.get(source, (source,))
        if sha256 and (source in GROUPS or sha256 != KNOWN[source].sha256):
            raise ModelError(f"{source}: --sha256 {sha256} differs from the pinned "
                             + ", ".join(KNOWN[m].sha256 for m in members))
        given = _given_files(source, list(files)) if files else {}
        names: list[str] = []
        for member in members:
            weights = given.get(member) or fetch_known(member, model_dir / "downloads", progress=progress,
                                                       mirror=mirror)
            names += _from_weights(member, weights, model_dir)
        return _after_install(names, model_dir)
    if urllib.parse.urlparse(source).scheme in ("http", "https"):
        if not sha256:
            raise ModelError(f"{source}: give --sha256 HEX (the file's hash) so the download can be checked")
        fname = Path(urllib.parse.urlparse(source).path).name or "download"
        with tempfile.TemporaryDirectory(dir=staging_dir(model_dir)) as tmp:
            path = download(source, Path(tmp) / fname, sha256, progress=progress)
            return _after_install(_install_file(path, model_dir, progress, mirror, replace_builtin), model_dir)
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelError(f"{source}: not a known model ({', '.join([*GROUPS, *KNOWN])}), URL or existing path")
    if sha256 and path.is_file() and sha256_file(path) != sha256:
        raise ModelError(f"{path}: sha256 {sha256_file(path)} differs from --sha256 {sha256}")
    return _after_install(_install_file(path, model_dir, progress, mirror, replace_builtin,
                                        sha256 if path.is_dir() else None), model_dir)
