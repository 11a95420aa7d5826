"""The `.pth` reader: real state dicts without PyTorch, and pickles that would run code refused unrun."""

from __future__ import annotations

import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edge.errors import ModelError
from edge.models import torch_pickle
from edge.models.torch_pickle import LEGACY_MAGIC, LEGACY_PROTOCOL, load, load_state_dict

V2 = "2.7_80x80_MiniFASNetV2.pth"


def _evil(marker: Path) -> bytes:
    """A protocol-0 pickle whose loading calls os.system('touch <marker>') (written by hand, never loaded here
    except through the reader under test and, in a child process, the standard unpickler)."""
    return f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()


def _legacy(main: bytes, header: bytes | None = None) -> bytes:
    """The legacy layout's five pickles around `main` (`header` replaces the system-info dict)."""
    info = pickle.dumps({"protocol_version": LEGACY_PROTOCOL, "little_endian": True}, protocol=2)
    return (pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(LEGACY_PROTOCOL, protocol=2)
            + (header or info) + main + pickle.dumps([], protocol=2))


def test_the_payload_is_real(tmp_path):
    """The standard unpickler does run it: what the reader below must refuse."""
    marker = tmp_path / "ran"
    (tmp_path / "evil.pkl").write_bytes(_evil(marker))
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))",
                    str(tmp_path / "evil.pkl")], check=True, timeout=60)
    assert marker.exists()


@pytest.mark.parametrize("layout", ["legacy-main", "legacy-header", "zip"])
def test_a_pickle_calling_os_system_is_refused_without_running(tmp_path, layout):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    if layout == "legacy-main":
        path.write_bytes(_legacy(_evil(marker)))
    elif layout == "legacy-header":
        path.write_bytes(_legacy(pickle.dumps({}, protocol=2), header=_evil(marker)))
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", _evil(marker))
            z.writestr("archive/version", "3\n")
    with pytest.raises(ModelError, match=r"refusing to load posix\.system|refusing to load os\.system"):
        load(path)
    assert not marker.exists()


def test_other_globals_are_refused_too(tmp_path):
    for module, name in [("builtins", "eval"), ("subprocess", "Popen"), ("torch.nn", "Module"),
                         ("torch", "load"), ("numpy", "frombuffer")]:
        path = tmp_path / "g.pth"
        path.write_bytes(_legacy(f"c{module}\n{name}\n(S'1'\ntR.".encode()))
        with pytest.raises(ModelError, match=f"refusing to load {module}.{name}"):
            load(path)
    assert set(torch_pickle.ALLOWED) >= {("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict")}


def test_tensors_must_lie_inside_their_storage(tmp_path):
    """A crafted size/stride reaching past the storage would read foreign memory: refused."""
    # By hand, protocol 2: _rebuild_tensor_v2(<storage "0": 4 floats>, offset 0, size (10,), stride (1,), False);
    # variants below by byte replacement.
    main = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n("
            b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04NtQ"
            b"K\x00K\n\x85K\x01\x85\x89tR.")
    data = (pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(LEGACY_PROTOCOL, protocol=2)
            + pickle.dumps({"little_endian": True}, protocol=2) + main + pickle.dumps(["0"], protocol=2)
            + np.int64(4).tobytes() + np.arange(4, dtype="<f4").tobytes())
    path = tmp_path / "oob.pth"
    path.write_bytes(data)
    with pytest.raises(ModelError, match="more elements than its storage"):
        load(path)
    path.write_bytes(data.replace(b"K\x00K\n\x85", b"K\x02K\x04\x85"))  # 4 elements from offset 2
    with pytest.raises(ModelError, match="reaches past its storage"):
        load(path)
    # A billion elements at stride 0 (a memory bomb on copy) is refused too.
    path.write_bytes(data.replace(b"K\x00K\n\x85K\x01\x85", b"K\x00J\x00\xca\x9a;\x85K\x00\x85"))
    with pytest.raises(ModelError, match="more elements than its storage"):
        load(path)
    # A storage claiming more bytes than the file holds is refused before it is read.
    claim = np.int64(10**9).tobytes()
    path.write_bytes(data.replace(b"K\x04NtQ", b"J\x00\xca\x9a;NtQ").replace(np.int64(4).tobytes() + b"\x00" * 4,
                                                                            claim + b"\x00" * 4))
    with pytest.raises(ModelError, match="file ends inside storage"):
        load(path)
    # The same tensor with size (4,) is read.
    path.write_bytes(data.replace(b"K\x00K\n\x85", b"K\x00K\x04\x85"))
    assert load(path).tolist() == [0.0, 1.0, 2.0, 3.0]


def test_truncated_and_foreign_files_are_model_errors(tmp_path, data):
    real = (data / "models" / "minifasnet" / V2).read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(real[: len(real) // 2])
    with pytest.raises(ModelError, match=r"cut\.pth"):
        load(cut)
    text = tmp_path / "text.pth"
    text.write_text("hello")
    with pytest.raises(ModelError):
        load(text)
    with pytest.raises(ModelError, match="no such file"):
        load(tmp_path / "absent.pth")


def test_reads_the_published_state_dicts(data):
    for name, se in [(V2, False), ("4_0_0_80x80_MiniFASNetV1SE.pth", True)]:
        sd = load_state_dict(data / "models" / "minifasnet" / name)
        assert not any(k.startswith("module.") for k in sd)
        w = sd["conv1.conv.weight"]
        assert w.dtype == np.float32 and w.shape == (32, 3, 3, 3) and w.flags.c_contiguous
        assert sd["conv1.bn.num_batches_tracked"].dtype == np.int64
        assert any(".se_module." in k for k in sd) is se
        assert sd["prob.weight"].shape == (3, 128) and np.isfinite(sd["prob.weight"]).all()
