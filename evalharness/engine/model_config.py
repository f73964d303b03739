"""A model's configuration as this interpreter's transformers reads it, without its weights, cheaply enough for the
planning stage: `AutoConfig` on a folder's config.json (or a hub id's), and for a GGUF file `AutoConfig` on a
metadata-only copy of it.

Why a copy: transformers reads a GGUF's configuration through `gguf.GGUFReader`, which parses every metadata field,
the tokenizer's arrays included, element by element: 22-44 s for Gemma 3 270M's 262k-token vocabulary on 2 shared CPU
cores (cProfile: all of it in `GGUFReader._build_fields`). Those arrays never reach the configuration (transformers
files them under the tokenizer), so `metadata_only_gguf` copies the metadata fields byte for byte (gguf_header.py
reads them without decoding long arrays) but without the `tokenizer.*` arrays and with no tensor, into a small
temporary GGUF (a few kB) that transformers then reads as it reads any GGUF. Where the metadata has no `{arch}.vocab_size`, transformers counts the token list: the
copy gets that count as `{arch}.vocab_size`. What differs: `tie_word_embeddings`, which transformers reads from the
tensor names (the copy, without tensors, says True), and nothing else (Gemma 3 270M and SmolLM2-135M, both tied: the
copy's configuration equals the GGUF's, `_name_or_path` aside; tests/test_decode_path.py checks it).
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

from ..gguf_header import ARRAY, UINT64, field_bytes, read_header, write_metadata


def metadata_only_gguf(src: Path, dest: Path) -> None:
    """Write to `dest` a GGUF holding `src`'s metadata fields byte for byte, less its `tokenizer.*` arrays, and no
    tensor (and the token count as `{arch}.vocab_size` where that is missing). ValueError where `src` is not a GGUF
    that gguf_header reads."""
    h = read_header(src)
    kept = [raw for key, raw in h.raw.items() if not (key.startswith("tokenizer.") and h.types[key] == ARRAY)]
    arch, tokens = h.fields.get("general.architecture"), h.fields.get("tokenizer.ggml.tokens")
    if isinstance(arch, str) and tokens is not None and f"{arch}.vocab_size" not in h.fields:
        kept.append(field_bytes(f"{arch}.vocab_size", UINT64, struct.pack("<Q", len(tokens))))
    write_metadata(dest, h.version, kept)


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
