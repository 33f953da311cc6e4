"""Read a TensorFlow (v1 `tf.train.Saver`) checkpoint without TensorFlow: numpy and the standard library.

A checkpoint with prefix P is two files. `P.index` is a LevelDB-format table (an SSTable): sorted
keys (variable names) whose values are `BundleEntryProto` messages (dtype, shape, and where the
tensor's bytes lie in the data file); the empty key holds a `BundleHeaderProto`. `P.data-00000-of-
00001` holds the raw little-endian tensor bytes. The formats are those of TensorFlow's
core/util/tensor_bundle and LevelDB's table/format (no compression: TensorFlow writes bundles
uncompressed); only what musicnn's checkpoints use is supported, and anything else is refused by name.

Integrity: every index block's masked CRC-32C is checked (the index is a few KB), and every tensor's
byte range and size against its dtype and shape. The tensors' own CRC-32C are not recomputed: pure
Python would take seconds per load, and pip already checks the wheel's sha256 on install.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.errors import StageFailedError

TABLE_MAGIC = 0xDB4775248B80FB57  # LevelDB's kTableMagicNumber, the footer's last 8 bytes
FOOTER_BYTES = 48  # two block handles (varints) padded to 40 bytes, then the magic
BLOCK_TRAILER_BYTES = 5  # compression type (1 byte) + masked CRC-32C of contents and type
NO_COMPRESSION = 0
CRC_MASK_DELTA = 0xA282EAD8
# TensorFlow's DataType enum values and the numpy types they hold (types.proto).
DTYPES: dict[int, np.dtype] = {1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"), 9: np.dtype("<i8"),
                               19: np.dtype("<f2")}
DTYPE_NAMES = {1: "float32", 2: "float64", 3: "int32", 9: "int64", 19: "float16", 10: "bool", 7: "string"}


class CheckpointError(StageFailedError):
    """A checkpoint that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int  # bytes into the data file
    size: int  # bytes


def read_checkpoint(prefix: Path | str) -> dict[str, np.ndarray]:
    """Every variable of the checkpoint at `prefix` (the path before `.index`), by name, as numpy arrays."""
    index_path, data_path = checkpoint_files(prefix)
    entries = read_index(index_path)
    data = data_path.read_bytes()
    tensors = {}
    for entry in entries.values():
        if entry.offset + entry.size > len(data):
            raise CheckpointError(f"{data_path}: {entry.name} lies at bytes {entry.offset}-{entry.offset + entry.size}"
                                  f" but the file has {len(data)}: truncated?")
        array = np.frombuffer(data, dtype=entry.dtype, count=entry.size // entry.dtype.itemsize, offset=entry.offset)
        tensors[entry.name] = array.reshape(entry.shape).copy()
    return tensors


def checkpoint_files(prefix: Path | str) -> tuple[Path, Path]:
    """The index and (single-shard) data file of a checkpoint prefix; a missing one is a CheckpointError."""
    prefix = str(prefix)
    index_path, data_path = Path(prefix + ".index"), Path(prefix + ".data-00000-of-00001")
    for path in (index_path, data_path):
        if not path.is_file():
            raise CheckpointError(f"no checkpoint file at {path}")
    return index_path, data_path


def read_index(path: Path) -> dict[str, TensorEntry]:
    """The tensor entries of a checkpoint's .index file, by variable name."""
    table = path.read_bytes()
    if len(table) < FOOTER_BYTES:
        raise CheckpointError(f"{path}: {len(table)} bytes, too short for a checkpoint index")
    footer = table[-FOOTER_BYTES:]
    if struct.unpack("<Q", footer[-8:])[0] != TABLE_MAGIC:
        raise CheckpointError(f"{path}: not a TensorFlow checkpoint index (no LevelDB table magic at its end)")
    _, pos = _block_handle(footer, 0)  # the metaindex block: empty in tensor bundles
    index_handle, _ = _block_handle(footer, pos)
    entries: dict[str, TensorEntry] = {}
    for _, handle_bytes in _block_entries(path, table, index_handle):
        data_handle, _ = _block_handle(handle_bytes, 0)
        for key, value in _block_entries(path, table, data_handle):
            name = key.decode("utf-8")
            if name == "":
                _check_header(path, value)
                continue
            entries[name] = _tensor_entry(path, name, value)
    return entries


# --- LevelDB table format -------------------------------------------------------------------------

def _block_handle(buf: bytes, pos: int) -> tuple[tuple[int, int], int]:
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return (offset, size), pos


def _block_entries(path: Path, table: bytes, handle: tuple[int, int]) -> list[tuple[bytes, bytes]]:
    """The (key, value) pairs of one block, keys restored from their shared prefixes; CRC checked."""
    offset, size = handle
    end = offset + size
    if end + BLOCK_TRAILER_BYTES > len(table):
        raise CheckpointError(f"{path}: a block at bytes {offset}-{end} runs past the end of the file")
    contents = table[offset:end]
    compression = table[end]
    if compression != NO_COMPRESSION:
        raise CheckpointError(f"{path}: block compression type {compression} is not supported (only none)")
    stored_crc = struct.unpack("<I", table[end + 1:end + 5])[0]
    if _unmask(stored_crc) != crc32c(table[offset:end + 1]):
        raise CheckpointError(f"{path}: the block at bytes {offset}-{end} fails its CRC-32C check: corrupt")
    restarts = struct.unpack("<I", contents[-4:])[0]
    limit = len(contents) - 4 * (restarts + 1)
    pairs, pos, key = [], 0, b""
    while pos < limit:
        shared, pos = _varint(contents, pos)
        unshared, pos = _varint(contents, pos)
        value_size, pos = _varint(contents, pos)
        key = key[:shared] + contents[pos:pos + unshared]
        pos += unshared
        pairs.append((key, contents[pos:pos + value_size]))
        pos += value_size
    return pairs


# --- protocol buffers (the few fields read here) ----------------------------------------------------

def _fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of every field: varints as ints, length-delimited as bytes, fixed as ints."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = struct.unpack("<I", buf[pos:pos + 4])[0], pos + 4
        elif wire == 1:
            value, pos = struct.unpack("<Q", buf[pos:pos + 8])[0], pos + 8
        else:
            raise ValueError(f"protobuf wire type {wire}")
        out.append((number, value))
    return out


def _message(value: int | bytes) -> bytes:
    """A field that holds an embedded message (length-delimited)."""
    if not isinstance(value, bytes):
        raise CheckpointError(f"a number ({value}) where the index holds a message: the index is corrupt")
    return value


def _check_header(path: Path, value: bytes) -> None:
    header = dict(_fields(value))  # BundleHeaderProto: 1 num_shards, 2 endianness (0 little), 3 version
    if header.get(1, 1) != 1:
        raise CheckpointError(f"{path}: the checkpoint has {header[1]!r} data shards; only single-shard ones are read")
    if header.get(2, 0) != 0:
        raise CheckpointError(f"{path}: the checkpoint is big-endian; only little-endian ones are read")


def _tensor_entry(path: Path, name: str, value: bytes) -> TensorEntry:
    # BundleEntryProto: 1 dtype, 2 shape (TensorShapeProto: 2 dim {1 size}), 3 shard_id, 4 offset, 5 size,
    # 6 crc32c, 7 slices.
    fields = _fields(value)
    found = dict(fields)
    if 7 in found:
        raise CheckpointError(f"{path}: {name} is stored in slices (partitioned variable); not supported")
    dtype_id = int(found.get(1, 0))
    if dtype_id not in DTYPES:
        raise CheckpointError(f"{path}: {name} has dtype {DTYPE_NAMES.get(dtype_id, dtype_id)}, not read here")
    shape_proto = _message(found.get(2, b""))
    dims = [dict(_fields(_message(dim))).get(1, 0) for number, dim in _fields(shape_proto) if number == 2]
    shape = tuple(int(d) for d in dims)
    dtype = DTYPES[dtype_id]
    size = int(found.get(5, 0))
    if size != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        raise CheckpointError(f"{path}: {name} has {size} bytes, but a {dtype} tensor of shape {shape} needs "
                              f"{int(np.prod(shape)) * dtype.itemsize}")
    return TensorEntry(name, dtype, shape, int(found.get(4, 0)), size)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointError("a varint runs past the end of its buffer: the index is truncated or corrupt")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


# --- CRC-32C (Castagnoli), as LevelDB checksums its blocks ------------------------------------------

def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _unmask(masked: int) -> int:
    rot = (masked - CRC_MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF
