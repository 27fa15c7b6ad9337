"""Read PyTorch checkpoints and NVlabs pickles without torch and without running their code.

Pickle is a small stack machine whose only dangerous instruction is "call this global".
Every global goes through `SafeUnpickler.find_class`, which returns one of our own,
side-effect-free reconstructions from `_ALLOWED` or raises `UnsafeCheckpointError` *before*
anything is called. Tensors become numpy arrays.

Supported containers:
  * torch zip checkpoints (`torch.save` since 1.6): `<prefix>/data.pkl` + `<prefix>/data/<key>`;
  * torch legacy checkpoints (magic number, protocol, sys_info, pickle, storage keys, raw
    storages), which is also what `torch.storage._load_from_bytes` receives inside NVlabs
    pickles (storages pickle themselves with `_use_new_zipfile_serialization=False`);
  * plain pickles (NVlabs network snapshots).
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from typing import Any, Callable, Optional

import ml_dtypes
import numpy as np

# torch's legacy format starts with this number pickled, then the protocol version 1001.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class CheckpointError(Exception):
    """A checkpoint that cannot be read or converted; the message is one line for the user."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle references a global outside the allow-list (nothing was called)."""


# ----------------------------------------------------------------------------- storages


class StorageType:
    """Stand-in for `torch.FloatStorage` & co.: only carries the element dtype."""

    def __init__(self, name: str, dtype):
        self.name, self.dtype = name, np.dtype(dtype)

    def __repr__(self):
        return f"StorageType({self.name})"


_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}
_TORCH_DTYPES = {
    "float32": np.float32,
    "float64": np.float64,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}


class Storage:
    """A flat, typed buffer. Legacy files allocate it first and fill it after the pickle."""

    def __init__(self, dtype, numel: int, data: Optional[np.ndarray] = None):
        self.dtype = np.dtype(dtype)
        self.numel = int(numel)
        self.array = np.zeros(self.numel, self.dtype) if data is None else data
        self.filled = data is not None


def _rebuild_tensor(storage, storage_offset, size, stride, *unused) -> np.ndarray:
    """`torch._utils._rebuild_tensor_v2`: a strided view of a storage, bounds-checked."""
    if not isinstance(storage, Storage):
        raise CheckpointError(f"tensor rebuilt from a non-storage {type(storage).__name__}")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
        raise CheckpointError(f"bad tensor geometry size={size} stride={stride}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.numel:
        raise CheckpointError(
            f"tensor of size {size} reads past its storage ({last} >= {storage.numel} elements)"
        )
    item = storage.dtype.itemsize
    # A view: legacy storages are filled in place after the pickle, so it must not copy yet.
    return np.lib.stride_tricks.as_strided(
        storage.array[offset:], size, tuple(s * item for s in stride), writeable=False
    )


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, state=None):
    return data


class Namespace:
    """Harmless stand-in for `argparse.Namespace` (pickle fills `__dict__`)."""

    def __repr__(self):
        return f"Namespace({self.__dict__})"


# ----------------------------------------------------------------------------- numpy


def _np_dtype(spec, align=False, copy=False):
    if not isinstance(spec, str):
        raise UnsafeCheckpointError(f"numpy.dtype from a non-string spec {type(spec).__name__}")
    return np.dtype(spec)


def _np_scalar(dtype, data=None):
    """`numpy.core.multiarray.scalar`: a numpy scalar from its raw bytes (never objects)."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafeCheckpointError("numpy scalar of object dtype")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise CheckpointError("corrupt numpy scalar")
    return np.frombuffer(data, dtype)[0]


def _reconstruct_persistent_obj(meta):
    """NVlabs `torch_utils.persistence`: keep the meta dict; never exec `module_src`."""
    return meta


def _allowed_table(load_from_bytes: Callable) -> dict[tuple[str, str], Any]:
    table = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "slice"): slice,
        ("argparse", "Namespace"): Namespace,
        # pytorch_GAN_zoo's config: an empty class whose pickle only fills `__dict__`.
        ("models.utils.config", "BaseConfig"): Namespace,
        ("dnnlib.util", "EasyDict"): dict,
        ("dnnlib.easydict", "EasyDict"): dict,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): load_from_bytes,
        ("numpy", "dtype"): _np_dtype,
        ("numpy.core.multiarray", "scalar"): _np_scalar,
        ("numpy._core.multiarray", "scalar"): _np_scalar,
    }
    for name, dt in _STORAGE_DTYPES.items():
        table[("torch", name)] = StorageType(name, dt)
        table[("torch.storage", name)] = StorageType(name, dt)
    for name, dt in _TORCH_DTYPES.items():
        table[("torch", name)] = StorageType(name, dt)
    return table


def _storage_dtype(storage_type, dtype_hint=None) -> np.dtype:
    if isinstance(dtype_hint, StorageType):
        return dtype_hint.dtype
    if not isinstance(storage_type, StorageType):
        raise CheckpointError(f"unknown storage type {storage_type!r}")
    return storage_type.dtype


class SafeUnpickler(pickle.Unpickler):
    """Unpickler whose globals come only from the allow-list."""

    def __init__(self, file, source: str, persistent_load: Optional[Callable] = None):
        super().__init__(file)
        self._source = source
        self._persistent = persistent_load
        self._allowed = _allowed_table(lambda b: load_legacy_bytes(b, source))

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"{self._source}: refusing to load global '{module}.{name}' (not on the "
                f"allow-list; nothing was executed)"
            ) from None

    def persistent_load(self, pid):
        if self._persistent is None:
            raise CheckpointError(f"{self._source}: unexpected persistent id in a plain pickle")
        return self._persistent(pid)


def _unpickle(data: io.BytesIO, source: str, persistent_load=None) -> Any:
    try:
        return SafeUnpickler(data, source, persistent_load).load()
    except CheckpointError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        struct.error,
        MemoryError,
        OverflowError,
    ) as e:
        raise CheckpointError(
            f"{source}: corrupt or truncated pickle ({type(e).__name__}: {e})"
        ) from None


# ----------------------------------------------------------------------------- containers


def load_zip(zf: zipfile.ZipFile, source: str) -> Any:
    """torch zip format: `<prefix>/data.pkl` with storages in `<prefix>/data/<key>`."""
    pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise CheckpointError(
            f"{source}: zip file without a single '<prefix>/data.pkl' (not a torch checkpoint)"
        )
    prefix = pkls[0][: -len("data.pkl")]
    names = set(zf.namelist())
    byteorder = "little"
    if prefix + "byteorder" in names:
        byteorder = zf.read(prefix + "byteorder").decode().strip()
    cache: dict[str, Storage] = {}

    def persistent_load(pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"{source}: unsupported persistent id {pid!r:.80}")
        _, stype, key, _location, numel = pid[:5]
        key = str(key)
        if key not in cache:
            dtype = _storage_dtype(stype)
            entry = f"{prefix}data/{key}"
            if entry not in names:
                raise CheckpointError(f"{source}: missing storage '{entry}'")
            raw = zf.read(entry)  # CRC-checked by zipfile
            n = len(raw) // dtype.itemsize
            if n < int(numel):
                raise CheckpointError(
                    f"{source}: storage '{entry}' has {n} elements, expected {numel}"
                )
            arr = np.frombuffer(
                raw, dtype.newbyteorder("<" if byteorder == "little" else ">"), count=n
            )
            cache[key] = Storage(dtype, n, arr.astype(dtype))
        return cache[key]

    with zf.open(pkls[0]) as f:
        obj = _unpickle(io.BytesIO(f.read()), source, persistent_load)
    return obj


def load_legacy(f: io.BytesIO, source: str) -> Any:
    """torch legacy format (torch < 1.6 files and the bytes inside NVlabs pickles)."""
    magic = _unpickle(f, source)
    if magic != _LEGACY_MAGIC:
        raise CheckpointError(f"{source}: not a torch legacy checkpoint (bad magic number)")
    if _unpickle(f, source) != _LEGACY_PROTOCOL:
        raise CheckpointError(f"{source}: unsupported torch legacy protocol")
    sys_info = _unpickle(f, source)
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
    roots: dict[str, Storage] = {}

    def persistent_load(pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"{source}: unsupported persistent id {pid!r:.80}")
        _, stype, key, _location, numel = pid[:5]
        view = pid[5] if len(pid) > 5 else None
        key = str(key)
        if key not in roots:
            dtype = _storage_dtype(stype)
            if int(numel) * dtype.itemsize > len(f.getbuffer()):
                raise CheckpointError(f"{source}: storage {key} larger than the file")
            roots[key] = Storage(dtype, numel)
        root = roots[key]
        if view is None:
            return root
        _view_key, offset, size = view  # very old torch: a view into a root storage
        if int(offset) + int(size) > root.numel:
            raise CheckpointError(f"{source}: storage view out of bounds")
        return Storage(root.dtype, size, root.array[int(offset) : int(offset) + int(size)])

    obj = _unpickle(f, source, persistent_load)
    keys = _unpickle(f, source)
    if not isinstance(keys, list):
        raise CheckpointError(f"{source}: corrupt legacy storage list")
    for key in keys:
        storage = roots.get(str(key))
        if storage is None:
            raise CheckpointError(f"{source}: legacy storage {key} not referenced")
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{source}: truncated (storage {key} header)")
        (numel,) = struct.unpack("<q", head)
        nbytes = numel * storage.dtype.itemsize
        if numel != storage.numel:
            raise CheckpointError(
                f"{source}: storage {key} has {numel} elements, expected {storage.numel}"
            )
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise CheckpointError(f"{source}: truncated (storage {key} data)")
        dt = storage.dtype.newbyteorder("<" if little else ">")
        storage.array[:] = np.frombuffer(raw, dt).astype(storage.dtype)
        storage.filled = True
    missing = [k for k, s in roots.items() if not s.filled]
    if missing:
        raise CheckpointError(f"{source}: storages without data: {missing[:3]}")
    return obj


def load_legacy_bytes(data: bytes, source: str) -> Storage:
    """`torch.storage._load_from_bytes(b)`: a serialized storage (zip or legacy format)."""
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError(f"{source}: storage bytes expected")
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            obj = load_zip(zf, source)
    else:
        obj = load_legacy(io.BytesIO(bytes(data)), source)
    if not isinstance(obj, Storage):
        raise CheckpointError(f"{source}: embedded bytes are not a storage")
    return obj


def detect_container(path: str) -> str:
    """'zip' | 'legacy' | 'pickle' from the first bytes of the file."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:1] == b"\x80" and head[2:3] == b"\x8a":  # PROTO n, LONG1 (the magic number)
        return "legacy"
    if head[:1] == b"\x80":
        return "pickle"
    raise CheckpointError(f"{path}: not a pickle or torch checkpoint")


def load(path: str) -> tuple[str, Any]:
    """Read `path` safely. Returns (container kind, object tree with numpy arrays)."""
    kind = detect_container(path)
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as zf:
                obj = load_zip(zf, path)
        else:
            with open(path, "rb") as fh:
                data = io.BytesIO(fh.read())
            obj = load_legacy(data, path) if kind == "legacy" else _unpickle(data, path)
            if kind == "pickle" and data.read(1):
                raise CheckpointError(f"{path}: trailing data after the pickle")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
        raise CheckpointError(
            f"{path}: corrupt or truncated file ({type(e).__name__}: {e})"
        ) from None
    return kind, _materialize(obj)


def _materialize(obj: Any, memo: Optional[dict] = None) -> Any:
    """Copy strided views into owned arrays, recursively (keeps sharing by identity)."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, np.ndarray):
        out = np.array(obj, copy=True)
    elif isinstance(obj, dict):
        out = type(obj)()
        memo[id(obj)] = out
        for k, v in obj.items():
            out[k] = _materialize(v, memo)
        return out
    elif isinstance(obj, list):
        out = [_materialize(v, memo) for v in obj]
    elif isinstance(obj, tuple):
        out = tuple(_materialize(v, memo) for v in obj)
    elif isinstance(obj, Namespace):
        out = Namespace()
        out.__dict__.update({k: _materialize(v, memo) for k, v in obj.__dict__.items()})
    else:
        out = obj
    memo[id(obj)] = out
    return out
