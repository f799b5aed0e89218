"""Reading `.safetensors` files that name themselves when damaged.

The format is an 8-byte little-endian header size, a JSON header (name -> dtype, shape, byte
offsets) and the raw tensors. A file that is empty, a git-LFS pointer, truncated or corrupt gets
one error that says which file, what is wrong and how to fix it, instead of `struct.error`,
`JSONDecodeError`, `MemoryError` or `cannot reshape`. Parsed by hand because
`safetensors.numpy` cannot hold bf16, which many checkpoints use.
"""

import hashlib
import json
import pathlib
import struct

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_LFS_POINTER = b"version https://git-lfs"


class DamagedFileError(ValueError):
    """A weights file that cannot be read as what it claims to be."""


def read(path: str | pathlib.Path, fix: str) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file, each checked to lie inside the file.

    Args:
        path: the file.
        fix: what the user should do about a damaged file, appended to the error.

    Raises:
        DamagedFileError: empty, a git-LFS pointer, truncated, or a corrupt header.
    """
    path = pathlib.Path(path)
    size = path.stat().st_size
    if size == 0:
        raise DamagedFileError(
            f"{path} is empty (0 bytes): a download or copy did not finish. {fix}"
        )
    with open(path, "rb") as f:
        start = f.read(max(8, len(_LFS_POINTER)))
        if start.startswith(_LFS_POINTER):
            raise DamagedFileError(
                f"{path} is a git-LFS pointer ({size} bytes), not the weights: run `git lfs pull` "
                f"in its repository, or download the file itself. {fix}"
            )
        if size < 8:
            raise DamagedFileError(f"{path} is truncated: {size} bytes, not even a header. {fix}")
        (header_size,) = struct.unpack("<Q", start[:8])
        if 8 + header_size > size:
            raise DamagedFileError(
                f"{path} is truncated or not a safetensors file: its header claims {header_size} "
                f"bytes, the file holds {size}. {fix}"
            )
        f.seek(8)
        try:
            header = json.loads(f.read(header_size))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DamagedFileError(f"{path} has a corrupt header ({error}). {fix}") from None
    header.pop("__metadata__", None)
    data_size = size - 8 - header_size
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_size) if data_size else None
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        if end > data_size:
            raise DamagedFileError(
                f"{path} is truncated: tensor {name!r} ends at data byte {end}, the file holds "
                f"{data_size} data bytes. {fix}"
            )
        if info["dtype"] not in DTYPES:
            raise DamagedFileError(
                f"{path}: tensor {name!r} has unknown dtype {info['dtype']!r}. {fix}"
            )
        tensors[name] = (
            np.asarray(data[begin:end]).view(DTYPES[info["dtype"]]).reshape(info["shape"])
        )
    return tensors


def check_finite(tensors: dict[str, np.ndarray], where: str, fix: str) -> None:
    """Raises DamagedFileError naming the first float tensor with NaN or inf values."""
    for name, value in tensors.items():
        if np.issubdtype(value.dtype, np.floating) or value.dtype == ml_dtypes.bfloat16:
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value.astype(np.float32))))
            if bad:
                raise DamagedFileError(
                    f"{where}: tensor {name!r} holds {bad} non-finite values (NaN or inf); these "
                    f"weights are damaged. {fix}"
                )


def sha256(path: str | pathlib.Path) -> str:
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
