"""A model's configuration as this interpreter's transformers reads it, without its weights, cheaply enough for the
planning stage: `AutoConfig` on a folder's config.json (or a hub id's), and for a GGUF file `AutoConfig` on a
metadata-only copy of it.

Why a copy: transformers reads a GGUF's configuration through `gguf.GGUFReader`, which parses every metadata field,
the tokenizer's arrays included, element by element: 22-44 s for Gemma 3 270M's 262k-token vocabulary on 2 shared CPU
cores (cProfile: all of it in `GGUFReader._build_fields`). Those arrays never reach the configuration (transformers
files them under the tokenizer), so `metadata_only_gguf` copies the header, its metadata fields byte for byte but
without the `tokenizer.*` arrays and with no tensor, into a small temporary GGUF (a few kB) that transformers then
reads as it reads any GGUF. Where the metadata has no `{arch}.vocab_size`, transformers counts the token list: the
copy gets that count as `{arch}.vocab_size`. What differs: `tie_word_embeddings`, which transformers reads from the
tensor names (the copy, without tensors, says True), and nothing else (Gemma 3 270M and SmolLM2-135M, both tied: the
copy's configuration equals the GGUF's, `_name_or_path` aside; tests/test_decode_path.py checks it).
"""

from __future__ import annotations

import mmap
import struct
import tempfile
from pathlib import Path

GGUF_MAGIC = b"GGUF"
# GGUF value types (gguf.GGUFValueType) -> size in bytes of one item; STRING (8) and ARRAY (9) are variable
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


class _Cursor:
    def __init__(self, buf, offset: int = 0):
        self.buf, self.offset = buf, offset

    def take(self, fmt: str, peek: bool = False):
        values = struct.unpack_from(fmt, self.buf, self.offset)
        if not peek:
            self.offset += struct.calcsize(fmt)
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        n = self.take("<Q")
        self.offset += n
        if self.offset > len(self.buf):
            raise ValueError("GGUF metadata runs past the end of the file")
        return bytes(self.buf[self.offset - n:self.offset]).decode("utf-8")

    def skip_value(self, vtype: int) -> None:
        if vtype in _FIXED:
            self.offset += _FIXED[vtype]
        elif vtype == _STRING:
            self.offset += 8 + self.take("<Q")
        elif vtype == _ARRAY:
            itype, count = self.take("<IQ")
            if itype in _FIXED:
                self.offset += _FIXED[itype] * count
            else:
                for _ in range(count):
                    self.skip_value(itype)
        else:
            raise ValueError(f"unknown GGUF value type {vtype}")
        if self.offset > len(self.buf):
            raise ValueError("GGUF metadata runs past the end of the file")


def metadata_only_gguf(src: Path, dest: Path) -> None:
    """Write to `dest` a GGUF holding `src`'s metadata fields byte for byte, less its `tokenizer.*` arrays, and no
    tensor (and the token count as `{arch}.vocab_size` where that is missing). Little-endian GGUF v2/v3 only
    (ValueError otherwise, or on a damaged file)."""
    try:
        kept, version = _kept_fields(src)
    except struct.error as e:  # a read past the end of the file
        raise ValueError(f"{src}: damaged GGUF metadata ({e})") from None
    dest.write_bytes(GGUF_MAGIC + struct.pack("<IQQ", version, 0, len(kept)) + b"".join(kept))


def _kept_fields(src: Path) -> tuple[list[bytes], int]:
    with open(src, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != GGUF_MAGIC:
            raise ValueError(f"{src}: not a GGUF file")
        c = _Cursor(buf, 4)
        version, _tensors, kv_count = c.take("<IQQ")
        if version not in (2, 3):
            raise ValueError(f"{src}: GGUF version {version} (or big-endian): not read here")
        kept, keys, arch, tokens = [], set(), None, None
        for _ in range(kv_count):
            start = c.offset
            key = c.string()
            vtype = c.take("<I")
            if key == "general.architecture" and vtype == _STRING:
                arch = c.string()
            elif key == "tokenizer.ggml.tokens" and vtype == _ARRAY:
                tokens = c.take("<IQ", peek=True)[1]
                c.skip_value(vtype)
            else:
                c.skip_value(vtype)
            keys.add(key)
            if not (vtype == _ARRAY and key.startswith("tokenizer.")):
                kept.append(bytes(buf[start:c.offset]))
    if arch and tokens is not None and f"{arch}.vocab_size" not in keys:
        name = f"{arch}.vocab_size".encode()
        kept.append(struct.pack("<Q", len(name)) + name + struct.pack("<IQ", 10, tokens))  # 10: UINT64
    return kept, version


def load_config(model: dict):
    """The model's configuration (transformers' config object) as this transformers reads it, without weights:
    `AutoConfig` on the folder (or hub id), for a GGUF on its metadata-only copy. Remote code is never run here
    (a model that needs it raises ValueError: the caller cannot tell)."""
    from transformers import AutoConfig

    if model.get("trust_remote_code"):
        raise ValueError("the model's configuration needs its remote code, which planning does not run")
    path = str(model["path"])
    if not model.get("gguf_file"):
        return AutoConfig.from_pretrained(path)
    gguf = Path(path) / model["gguf_file"]
    if not gguf.is_file():  # a GGUF on the hub: reading its metadata means fetching the whole file
        raise ValueError(f"{gguf}: not a local file")
    with tempfile.TemporaryDirectory(prefix="evalharness-gguf-meta-") as tmp:
        metadata_only_gguf(gguf, Path(tmp) / "metadata.gguf")
        return AutoConfig.from_pretrained(tmp, gguf_file="metadata.gguf")
