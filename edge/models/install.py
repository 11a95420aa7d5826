"""`facegate models install`: put a bundle into the model directory, hash-checked.

A source is one of:
- a known name (KNOWN): the upstream file at a pinned URL with a pinned sha256. Published weights that
  are not a bundle (MiniFASNet's PyTorch state dicts) are converted by their export recipe, which needs
  the [export] extra;
- a URL of a bundle archive (.tar.gz, .tgz, .tar or .zip), downloaded with a progress bar; --sha256 is
  required so the download can be checked;
- a local bundle folder or archive (what `facegate export …` writes), or a known upstream file by its hash.

A bundle is `manifest.json` + the model file it names (+ `parity.json`). The model file must match the
manifest's sha256. Installation is atomic: the bundle appears complete in `<model_dir>/<name>/` or not at all.
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

from edge.atomic import replace_dir
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
KNOWN: dict[str, Known] = {
    "minifasnet-v2": Known(_SILENT_FACE + "2.7_80x80_MiniFASNetV2.pth",
                           "a5eb02e1843f19b5386b953cc4c9f011c3f985d0ee2bb9819eea9a142099bec0",
                           recipe="export.recipes.minifasnet:install_from_weights",
                           note="MiniFASNetV2 anti-spoofing (2.7× crop), Apache-2.0"),
    "minifasnet-v1se": Known(_SILENT_FACE + "4_0_0_80x80_MiniFASNetV1SE.pth",
                             "84ee1d37d96894d5e82de5a57df044ef80a58be2b218b5ed7cdfd875ec2f5990",
                             recipe="export.recipes.minifasnet:install_from_weights",
                             note="MiniFASNetV1SE anti-spoofing (4.0× crop), Apache-2.0"),
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


def install_bundle(bundle: Path, model_dir: Path) -> str:
    """Check a bundle folder and copy it to `<model_dir>/<name>/` atomically; returns the model's name."""
    try:
        data = json.loads((bundle / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{bundle}: cannot read manifest.json ({exc})") from None
    m = Manifest.from_dict(data, origin=str(bundle / "manifest.json"))
    src = m.source.get("file")
    if "package" in m.source or not src or Path(src).is_absolute() or ".." in Path(src).parts or "/" in src:
        raise ModelError(f"{bundle}: a bundle's source must be {{'file': NAME}} inside the bundle, got {m.source}")
    if m.name in ("", ".", "..", "prepared", "overrides", "downloads", ".staging") or "/" in m.name:
        raise ModelError(f"{bundle}: {m.name!r} cannot be a bundle name")
    model = bundle / src
    if not model.is_file():
        raise ModelError(f"{bundle}: model file {src} is missing")
    actual = sha256_file(model)
    if actual != m.sha256:
        raise ModelError(f"{bundle}: {src} has sha256 {actual}, but its manifest says {m.sha256}")
    staging = staging_dir(model_dir)
    tmp = Path(tempfile.mkdtemp(dir=staging, prefix=f"{m.name}."))
    os.chmod(tmp, 0o755)
    try:
        for name in {src, *BUNDLE_FILES}:
            if (bundle / name).is_file():
                shutil.copyfile(bundle / name, tmp / name)
        replace_dir(tmp, model_dir / m.name, staging)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return m.name


def _install_file(path: Path, model_dir: Path, progress: bool, mirror: str | None) -> list[str]:
    if path.is_dir():
        return [install_bundle(_find_bundle(path), model_dir)]
    if path.name.lower().endswith(ARCHIVE_SUFFIXES):
        with tempfile.TemporaryDirectory(dir=staging_dir(model_dir)) as tmp:
            _safe_extract(path, Path(tmp))
            return [install_bundle(_find_bundle(Path(tmp)), model_dir)]
    digest = sha256_file(path)
    for name, known in KNOWN.items():
        if digest == known.sha256:  # an upstream file fetched by hand: the same as installing its name
            return _from_weights(name, path, model_dir)
    raise ModelError(f"{path}: not a bundle (folder or .tar.gz/.tgz/.tar/.zip archive) nor a known upstream "
                     f"file; `facegate export …` writes bundles")


def _from_weights(name: str, weights: Path, model_dir: Path) -> list[str]:
    recipe = KNOWN[name].recipe
    if recipe is None:
        return [install_bundle(_find_bundle(weights), model_dir)]
    module, func = recipe.split(":")
    try:
        convert = getattr(importlib.import_module(module), func)
    except ImportError as exc:
        raise ModelError(f"{name}: the upstream file is PyTorch weights; converting it needs the export extra "
                         f"({exc.name} is missing): pip install 'facegate[export]'") from None
    return list(convert(weights, model_dir))


def install(source: str, sha256: str | None = None, model_dir: Path | None = None, progress: bool = True,
            mirror: str | None = None) -> list[str]:
    """Install `source` (known name, URL or local path) into the model directory; returns the installed names."""
    model_dir = Path(model_dir) if model_dir else Registry().model_dir
    model_dir.mkdir(parents=True, exist_ok=True)
    sha256 = _check_sha(sha256)
    mirror = mirror or os.environ.get("FACEGATE_MODEL_MIRROR")
    if source in KNOWN:
        known = KNOWN[source]
        if sha256 and sha256 != known.sha256:
            raise ModelError(f"{source}: --sha256 {sha256} differs from the pinned {known.sha256}")
        weights = fetch_known(source, model_dir / "downloads", progress=progress, mirror=mirror)
        return _from_weights(source, weights, model_dir)
    if urllib.parse.urlparse(source).scheme in ("http", "https"):
        if not sha256:
            raise ModelError(f"{source}: give --sha256 HEX (the file's hash) so the download can be checked")
        fname = Path(urllib.parse.urlparse(source).path).name or "download"
        with tempfile.TemporaryDirectory(dir=staging_dir(model_dir)) as tmp:
            path = download(source, Path(tmp) / fname, sha256, progress=progress)
            return _install_file(path, model_dir, progress, mirror)
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelError(f"{source}: not a known model ({', '.join(sorted(KNOWN))}), URL or existing path")
    if sha256 and path.is_file() and sha256_file(path) != sha256:
        raise ModelError(f"{path}: sha256 {sha256_file(path)} differs from --sha256 {sha256}")
    return _install_file(path, model_dir, progress, mirror)
