"""Read a PyTorch `.pth` state dict into numpy arrays without PyTorch and without running its pickle's code.

`torch.save` writes one of two layouts:

- the zip layout (PyTorch ≥ 1.6): `<root>/data.pkl` holds the object graph; every tensor's storage is a
  separate zip member `<root>/data/<key>` (raw bytes, byte order in `<root>/byteorder`, little-endian when
  absent); a storage is referenced from the pickle by the persistent id
  `('storage', <storage type>, key, location, numel)`;
- the legacy layout (what the published MiniFASNet weights use): five pickles one after another — a magic
  number, the protocol version (1001), a small system-info dict, the object graph, and the sorted list of
  storage keys — followed by each storage in that order as an int64 element count and the raw bytes. Its
  persistent ids are `('storage', <storage type>, key, location, numel, view)`, where `view` is None or
  `(view key, offset, numel)` for a slice of another storage.

A pickle is a program: a GLOBAL opcode imports any callable and REDUCE calls it, so loading an untrusted
one with the standard unpickler can run anything (os.system included). `_Unpickler.find_class` therefore
resolves only the names on ALLOWED, each to a function of ours that builds plain Python/numpy values; any
other name is refused before it is imported. Tensors become numpy arrays, checked to lie inside their storage.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from edge.errors import ModelError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# Storage classes by name → numpy dtype (bfloat16 is read as its 16 bits, widened to float32 below).
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"), "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"), "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"), "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageType:
    """What a GLOBAL like `torch.FloatStorage` resolves to: only its element type."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return STORAGE_DTYPES[self.name]


@dataclass(frozen=True)
class _StorageRef:
    """A storage named by a persistent id; its bytes are read once the pickle is done (legacy layout)."""

    key: str
    kind: _StorageType
    numel: int
    view: tuple[str, int, int] | None = None


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise ModelError(f"malformed tensor {what} {value!r}")
    return tuple(value)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_ignored: Any) -> _TensorRef:
    """torch._utils._rebuild_tensor(_v2): (storage, offset, size, stride[, requires_grad, hooks, metadata])."""
    if not isinstance(storage, _StorageRef) or not isinstance(offset, int) or offset < 0:
        raise ModelError("malformed tensor in the pickle")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride):
        raise ModelError(f"tensor size {size} and stride {stride} differ in length")
    return _TensorRef(storage, offset, size, stride)


def _rebuild_parameter(data: Any, *_ignored: Any) -> Any:
    """torch._utils._rebuild_parameter(data, requires_grad, hooks): a Parameter is just its tensor here."""
    if not isinstance(data, _TensorRef):
        raise ModelError("malformed parameter in the pickle")
    return data


def _ordered_dict(*args: Any) -> OrderedDict:
    return OrderedDict(*args)


# The only names a pickle may import. Everything else — os.system, builtins.eval, subprocess.Popen, even
# torch.nn.Module — is refused in find_class, before any module is imported.
ALLOWED: dict[tuple[str, str], Callable[..., Any] | _StorageType] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], origin: str, allow_storages: bool = True) -> None:
        super().__init__(file)
        self.origin, self.allow_storages = origin, allow_storages
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = ALLOWED.get((module, name))
        if found is None:
            raise ModelError(f"{self.origin}: refusing to load {module}.{name} from the pickle (only tensors, "
                             f"storages and OrderedDict are allowed in a state dict)")
        return found

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not self.allow_storages:
            raise ModelError(f"{self.origin}: unexpected storage reference in the header")
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)
                and pid[4] >= 0):
            raise ModelError(f"{self.origin}: unsupported persistent id {pid!r}")
        view = None
        if len(pid) == 6 and pid[5] is not None:
            v = pid[5]
            if not (isinstance(v, tuple) and len(v) == 3 and isinstance(v[0], str) and isinstance(v[1], int)
                    and isinstance(v[2], int) and v[1] >= 0 and v[2] >= 0 and v[1] + v[2] <= pid[4]):
                raise ModelError(f"{self.origin}: malformed storage view {v!r}")
            view = (v[0], v[1], v[2])
        ref = _StorageRef(pid[2], pid[1], pid[4], view)
        known = self.storages.setdefault(ref.key, ref)
        if (known.kind, known.numel) != (ref.kind, ref.numel):
            raise ModelError(f"{self.origin}: storage {ref.key} is described twice, differently")
        return ref


def _load_pickle(f: IO[bytes], origin: str, allow_storages: bool = False) -> tuple[Any, _Unpickler]:
    u = _Unpickler(f, origin, allow_storages)
    try:
        return u.load(), u
    except ModelError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            struct.error, MemoryError, RecursionError) as exc:
        raise ModelError(f"{origin}: not a readable PyTorch pickle ({type(exc).__name__}: {exc})") from None


def _materialise(obj: Any, storages: dict[str, np.ndarray], origin: str) -> Any:
    """Replace every tensor reference in the (dict/list/tuple) graph by a contiguous numpy array."""
    if isinstance(obj, _TensorRef):
        return _tensor(obj, storages, origin)
    if isinstance(obj, dict):
        out = type(obj)() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _materialise(v, storages, origin)
        return out
    if isinstance(obj, list | tuple):
        return type(obj)(_materialise(v, storages, origin) for v in obj)
    return obj


def _tensor(t: _TensorRef, storages: dict[str, np.ndarray], origin: str) -> np.ndarray:
    data = storages[t.storage.key]
    if t.storage.view is not None:
        _, start, n = t.storage.view
        data = data[start:start + n]
    count = int(np.prod(t.size, dtype=np.int64))
    if count > len(data):  # a state dict's tensors are dense: more elements than storage means stride 0 tricks
        raise ModelError(f"{origin}: a tensor of size {t.size} has more elements than its storage ({len(data)})")
    if count:
        last = t.offset + sum((s - 1) * st for s, st in zip(t.size, t.stride, strict=True))
        if last >= len(data):
            raise ModelError(f"{origin}: a tensor of size {t.size} reaches past its storage ({len(data)} elements)")
    out = np.lib.stride_tricks.as_strided(data[t.offset:] if count else data[:0], shape=t.size,
                                          strides=tuple(s * data.itemsize for s in t.stride), writeable=False)
    out = np.array(out, copy=True)  # contiguous, native byte order, owning its memory
    if t.storage.kind.name == "BFloat16Storage":  # the upper half of a float32
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out.astype(out.dtype.newbyteorder("="))


def _from_bytes(raw: bytes, ref: _StorageRef, big_endian: bool, origin: str) -> np.ndarray:
    dtype = ref.kind.dtype
    if len(raw) != ref.numel * dtype.itemsize:
        raise ModelError(f"{origin}: storage {ref.key} holds {len(raw)} bytes, expected "
                         f"{ref.numel} × {dtype.itemsize}")
    return np.frombuffer(raw, dtype.newbyteorder(">") if big_endian else dtype)


def _load_zip(path: Path, origin: str) -> Any:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise ModelError(f"{origin}: expected one <root>/data.pkl in the archive, found {len(pickles)}")
            root = pickles[0][: -len("data.pkl")]
            obj, u = _load_pickle(io.BytesIO(z.read(pickles[0])), origin, allow_storages=True)
            big = root + "byteorder" in names and z.read(root + "byteorder").strip() == b"big"
            storages = {}
            for key, ref in u.storages.items():
                member = f"{root}data/{key}"
                if member not in names:
                    raise ModelError(f"{origin}: storage {key} is missing from the archive")
                storages[key] = _from_bytes(z.read(member), ref, big, origin)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"{origin}: cannot read the archive ({exc})") from None
    return _materialise(obj, storages, origin)


def _load_legacy(path: Path, origin: str) -> Any:
    try:
        return _read_legacy(path, origin)
    except OSError as exc:
        raise ModelError(f"{origin}: cannot read the file ({exc})") from None


def _read_legacy(path: Path, origin: str) -> Any:
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic, _ = _load_pickle(f, origin)
        if magic != LEGACY_MAGIC:
            raise ModelError(f"{origin}: not a PyTorch file (neither a zip archive nor the legacy format)")
        protocol, _ = _load_pickle(f, origin)
        if protocol != LEGACY_PROTOCOL:
            raise ModelError(f"{origin}: legacy PyTorch protocol {protocol!r} is not supported")
        info, _ = _load_pickle(f, origin)
        if not isinstance(info, dict) or not info.get("little_endian", True):
            raise ModelError(f"{origin}: only little-endian legacy files are supported")
        obj, u = _load_pickle(f, origin, allow_storages=True)
        keys, _ = _load_pickle(f, origin)
        if not isinstance(keys, list) or sorted(keys) != sorted(u.storages):
            raise ModelError(f"{origin}: its storage list does not match the storages the pickle uses")
        storages = {}
        for key in keys:
            ref = u.storages[key]
            head = f.read(8)
            if len(head) != 8:
                raise ModelError(f"{origin}: file ends before storage {key}")
            (numel,) = struct.unpack("<q", head)
            if numel != ref.numel:
                raise ModelError(f"{origin}: storage {key} has {numel} elements, the pickle says {ref.numel}")
            if numel * ref.kind.dtype.itemsize > size - f.tell():
                raise ModelError(f"{origin}: file ends inside storage {key}")
            storages[key] = _from_bytes(f.read(numel * ref.kind.dtype.itemsize), ref, False, origin)
    return _materialise(obj, storages, origin)


def load(path: Path) -> Any:
    """The object a `.pth` file holds, with tensors as numpy arrays; ModelError for anything else."""
    path = Path(path)
    origin = str(path)
    if not path.is_file():
        raise ModelError(f"{origin}: no such file")
    return _load_zip(path, origin) if zipfile.is_zipfile(path) else _load_legacy(path, origin)


def load_state_dict(path: Path, strip: str = "module.") -> dict[str, np.ndarray]:
    """A flat {name: array} state dict, with the `strip` prefix (DataParallel's "module.") removed."""
    obj = load(path)
    if not isinstance(obj, dict) or not obj:
        raise ModelError(f"{path}: not a state dict (got {type(obj).__name__})")
    out = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray):
            raise ModelError(f"{path}: not a flat state dict of tensors (entry {k!r})")
        out[k[len(strip):] if strip and k.startswith(strip) else k] = v
    return out
