"""`facegate models install`: bundles from folders, archives and URLs (a local server on loopback), hash-checked."""

import functools
import http.server
import json
import shutil
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edge.cli import main
from edge.errors import ModelError
from edge.models.install import KNOWN, install
from edge.models.registry import Registry, sha256_file
from export.bundle import write_bundle


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # the test output is not an access log
        pass


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A real bundle: the prepared SFace graph under the name 'sface-mirror'."""
    reg = Registry()
    m = reg.manifest("sface")
    data = m.to_dict()
    data.update(name="sface-mirror", prepare=[])
    return write_bundle(tmp_path / "built", data, reg.runtime_file(m), {"crops": 0})


def _tar(bundle: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as t:
        t.add(bundle, arcname=bundle.name)
    return dest


def _installed(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir() if not p.name.startswith("."))


def test_installs_a_bundle_archive_from_a_url(tmp_path, server, bundle, capsys):
    root, base = server
    archive = _tar(bundle, root / "sface-mirror.tar.gz")
    model_dir = tmp_path / "models"
    names = install(f"{base}/{archive.name}", sha256=sha256_file(archive), model_dir=model_dir)
    assert names == ["sface-mirror"] and _installed(model_dir) == ["sface-mirror"]
    assert not list((model_dir / ".staging").iterdir())
    runtime, _ = Registry(model_dir).open("sface-mirror")
    x = np.zeros((2, 3, 112, 112), np.float32)
    ref_rt, _ = Registry(model_dir).open("sface")
    np.testing.assert_allclose(runtime.run({runtime.input_names[0]: x})[0],
                               ref_rt.run({ref_rt.input_names[0]: x})[0], atol=1e-5)


def test_a_download_with_the_wrong_hash_installs_nothing(tmp_path, server, bundle):
    root, base = server
    archive = _tar(bundle, root / "b.tar.gz")
    model_dir = tmp_path / "models"
    with pytest.raises(ModelError, match="sha256"):
        install(f"{base}/{archive.name}", sha256="0" * 64, model_dir=model_dir, progress=False)
    with pytest.raises(ModelError, match="--sha256"):
        install(f"{base}/{archive.name}", model_dir=model_dir)
    with pytest.raises(ModelError, match="download failed"):
        install(f"{base}/absent.tar.gz", sha256="0" * 64, model_dir=model_dir, progress=False)
    assert _installed(model_dir) == [] and not list((model_dir / ".staging").iterdir())


def test_installs_folders_and_zip_archives_and_replaces_an_older_copy(tmp_path, bundle):
    model_dir = tmp_path / "models"
    assert install(str(bundle), model_dir=model_dir) == ["sface-mirror"]
    zipped = tmp_path / "b.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        for f in bundle.iterdir():
            z.write(f, f.name)  # a flat archive: manifest.json at the top
    assert install(str(zipped), sha256=sha256_file(zipped), model_dir=model_dir) == ["sface-mirror"]
    assert _installed(model_dir) == ["sface-mirror"]
    assert sorted(p.name for p in (model_dir / "sface-mirror").iterdir()) == [
        "manifest.json", "model.onnx", "parity.json"]
    with pytest.raises(ModelError, match="differs from --sha256"):
        install(str(zipped), sha256="1" * 64, model_dir=model_dir)


def test_refuses_a_tampered_model_and_unsafe_archives(tmp_path, bundle):
    model_dir = tmp_path / "models"
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    with open(tampered / "model.onnx", "r+b") as f:
        f.seek(4096)
        f.write(b"\xff\xfe\xfd")
    with pytest.raises(ModelError, match="manifest says"):
        install(str(tampered), model_dir=model_dir)
    escaping = tmp_path / "escape.tar.gz"
    with tarfile.open(escaping, "w:gz") as t:
        t.add(bundle / "manifest.json", arcname="../manifest.json")
    with pytest.raises(ModelError, match="refusing"):
        install(str(escaping), model_dir=model_dir)
    outside = json.loads((bundle / "manifest.json").read_text())
    outside["source"] = {"file": "../../etc/passwd"}
    (tampered / "manifest.json").write_text(json.dumps(outside))
    with pytest.raises(ModelError, match="inside the bundle"):
        install(str(tampered), model_dir=model_dir)
    with pytest.raises(ModelError, match="not a known model"):
        install(str(tmp_path / "nothing-here"), model_dir=model_dir)
    assert _installed(model_dir) == []


def test_cli_install_prints_what_it_installed(tmp_path, bundle, capsys):
    assert main(["models", "install", str(bundle), "--model-dir", str(tmp_path / "m"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["installed"] == ["sface-mirror"] and Path(out["model_dir"]) == tmp_path / "m"


def test_known_name_downloads_the_pinned_weights_and_converts_them(tmp_path, server, data, capsys):
    """minifasnet-v2 from a mirror of the upstream file: hash-checked download, then the device's converter."""
    root, base = server
    name = KNOWN["minifasnet-v2"].url.rsplit("/", 1)[-1]
    shutil.copy(data / "models" / "minifasnet" / name, root / name)
    model_dir = tmp_path / "models"
    assert install("minifasnet-v2", model_dir=model_dir, mirror=base) == ["minifasnet-v2"]
    assert sha256_file(model_dir / "downloads" / name) == KNOWN["minifasnet-v2"].sha256
    m = Registry(model_dir).manifest("minifasnet-v2")
    assert m.task == "liveness" and m.extra["crop_scale"] == 2.7 and m.extra["live_index"] == 1
    parity = json.loads((model_dir / "minifasnet-v2" / "parity.json").read_text())
    assert parity["passed"] and parity["crops"] == 4 and parity["max_abs_diff"] <= 1e-5
    (root / name).write_bytes(b"not the weights")  # a corrupt mirror cannot replace the cached file
    (model_dir / "downloads" / name).unlink()
    with pytest.raises(ModelError, match="sha256"):
        install("minifasnet-v2", model_dir=model_dir, mirror=base, progress=False)


def test_a_bundle_whose_file_is_not_a_model_is_refused_before_it_is_installed(tmp_path, bundle):
    """Random bytes with a matching sha256 were installed, and every later command crashed with protobuf's
    DecodeError (exit 1): install loads the model first, and a file put there by hand is a ModelError."""
    model_dir = tmp_path / "models"
    junk = tmp_path / "junk"
    shutil.copytree(bundle, junk)
    (junk / "model.onnx").write_bytes(np.random.default_rng(0).bytes(1000))
    data = json.loads((junk / "manifest.json").read_text())
    data.update(name="junk", sha256=sha256_file(junk / "model.onnx"))
    for prepare in ([], ["drop_dangling_inputs"]):
        data["prepare"] = prepare
        (junk / "manifest.json").write_text(json.dumps(data))
        with pytest.raises(ModelError, match="cannot be loaded as 'junk'"):
            install(str(junk), model_dir=model_dir)
        assert _installed(model_dir) == []
        shutil.copytree(junk, model_dir / "junk")  # copied by hand: refused when used, never a traceback
        with pytest.raises(ModelError, match=r"model\.onnx"):
            Registry(model_dir).open("junk")
        shutil.rmtree(model_dir / "junk")
        assert main(["models", "install", str(junk), "--model-dir", str(model_dir)]) == 2


def test_a_bundle_cannot_take_a_builtin_name_unless_asked_and_sha256_checks_a_folders_model(tmp_path, bundle):
    model_dir = tmp_path / "models"
    shadow = tmp_path / "shadow"
    shutil.copytree(bundle, shadow)
    data = json.loads((shadow / "manifest.json").read_text())
    data["name"] = "sface-int8"
    (shadow / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="'sface-int8' is the name of a built-in model"):
        install(str(shadow), model_dir=model_dir)
    assert main(["models", "install", str(shadow), "--model-dir", str(model_dir)]) == 2
    assert _installed(model_dir) == []
    assert main(["models", "install", str(shadow), "--model-dir", str(model_dir), "--replace-builtin"]) == 0
    assert _installed(model_dir) == ["sface-int8"]
    with pytest.raises(ModelError, match="but --sha256 says"):
        install(str(bundle), sha256="1" * 64, model_dir=model_dir)
    assert _installed(model_dir) == ["sface-int8"]
    assert install(str(bundle), sha256=sha256_file(bundle / "model.onnx"), model_dir=model_dir) == ["sface-mirror"]
