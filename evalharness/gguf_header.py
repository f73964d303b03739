"""A GGUF file's header, read cheaply: its metadata fields and its tensor infos, without the tensors' data and
without decoding the tokenizer's long arrays item by item.

`gguf.GGUFReader` parses every metadata field into numpy views, the tokenizer's arrays included, item by item: 22-44 s
for Gemma 3 270M's 262k-token vocabulary (three arrays of 262k items) on 2 shared CPU cores, all of it in
`GGUFReader._build_fields`. Here an array of more than `SMALL_ARRAY` items is only walked over (`LongArray`: its item
type and count) and every field keeps its bytes as they stand in the file (`raw`), so that a metadata-only copy can
be written from them (engine/model_config.py). Little-endian GGUF v2/v3 (what llama.cpp writes); anything else, or a
file cut short, is a ValueError.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"GGUF"
UINT64, STRING, ARRAY = 10, 8, 9
# GGUF value types (gguf.GGUFValueType) of fixed size -> struct format
FIXED = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
SMALL_ARRAY = 4096  # arrays up to this many items are decoded (per-layer values); longer ones are only counted


@dataclass(frozen=True)
class LongArray:
    """An array field too long to decode here (a tokenizer's tokens, scores, types, merges)."""

    item_type: int
    count: int

    def __len__(self) -> int:
        return self.count


@dataclass
class Header:
    version: int
    fields: dict[str, object] = field(default_factory=dict)  # key -> value (a LongArray for a long array)
    types: dict[str, int] = field(default_factory=dict)  # key -> GGUF value type
    raw: dict[str, bytes] = field(default_factory=dict)  # key -> the field's bytes in the file (key, type, value)
    tensors: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)  # (name, shape) as the file lists them


class _Cursor:
    def __init__(self, buf, offset: int = 0):
        self.buf, self.offset = buf, offset

    def take(self, fmt: str):
        values = struct.unpack_from(fmt, self.buf, self.offset)
        self.offset += struct.calcsize(fmt)
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        n = self.take("<Q")
        self.offset += n
        if self.offset > len(self.buf):
            raise ValueError("a string runs past the end of the file")
        return bytes(self.buf[self.offset - n:self.offset]).decode("utf-8", errors="replace")

    def value(self, vtype: int):
        if vtype in FIXED:
            return self.take(FIXED[vtype])
        if vtype == STRING:
            return self.string()
        if vtype != ARRAY:
            raise ValueError(f"unknown GGUF value type {vtype}")
        itype, count = self.take("<IQ")
        if count <= SMALL_ARRAY:
            return [self.value(itype) for _ in range(count)]
        if itype in FIXED:
            self.offset += struct.calcsize(FIXED[itype]) * count
        elif itype == STRING:  # walked over by their lengths, not decoded: nothing reads them
            for _ in range(count):
                self.offset += 8 + struct.unpack_from("<Q", self.buf, self.offset)[0]
        else:
            for _ in range(count):
                self.value(itype)
        if self.offset > len(self.buf):
            raise ValueError("an array runs past the end of the file")
        return LongArray(itype, count)


def read_header(path: Path) -> Header:
    """The header of the GGUF file at `path` (ValueError if it is not one, or is damaged)."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != MAGIC:
                raise ValueError(f"{path}: not a GGUF file")
            c = _Cursor(buf, 4)
            version, n_tensors, n_fields = c.take("<IQQ")
            if version not in (2, 3):
                raise ValueError(f"{path}: GGUF version {version} (or big-endian): not read here")
            h = Header(version)
            for _ in range(n_fields):
                start = c.offset
                key = c.string()
                h.types[key] = vtype = c.take("<I")
                h.fields[key] = c.value(vtype)
                h.raw[key] = bytes(buf[start:c.offset])
            for _ in range(n_tensors):
                name = c.string()
                dims = tuple(c.take("<Q") for _ in range(c.take("<I")))
                c.take("<IQ")  # its quantization type and data offset
                h.tensors.append((name, dims))
            return h
    except struct.error as e:  # a read past the end of the file
        raise ValueError(f"{path}: damaged GGUF header ({e})") from None


def field_bytes(key: str, vtype: int, packed_value: bytes) -> bytes:
    """One metadata field as GGUF stores it: the key, its value type, the value's bytes."""
    name = key.encode("utf-8")
    return struct.pack("<Q", len(name)) + name + struct.pack("<I", vtype) + packed_value


def write_metadata(dest: Path, version: int, fields: list[bytes]) -> None:
    """A GGUF holding these metadata fields (each as field_bytes or Header.raw give it) and no tensor."""
    dest.write_bytes(MAGIC + struct.pack("<IQQ", version, 0, len(fields)) + b"".join(fields))
