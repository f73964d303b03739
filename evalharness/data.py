"""Where the GSM8K rows come from: the copy embedded in the package (the default, offline), a Hugging Face hub id
(`openai/gsm8k`), or a local JSONL (optionally .gz/.xz/.bz2 compressed) / parquet file.

Local files are checked row by row before anything runs (one clear error line for a malformed row, a binary file or
an oversized field); the rows are then read by `datasets` through lm-eval, exactly as a hub dataset would be.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from dataclasses import dataclass, field
from pathlib import Path

from .config import UsageError

HUB_DATA = "openai/gsm8k"
HUB_DATA_CONFIG = "main"
# GSM8K's test and train splits shipped inside the package (MIT; gsm8k_data/SOURCE.md): the default --data
EMBEDDED_DIR = Path(__file__).parent / "gsm8k_data"
EMBEDDED_TEST = EMBEDDED_DIR / "test.jsonl.xz"
EMBEDDED_LABEL = "GSM8K test (embedded copy of openai/grade-school-math, MIT)"
REQUIRED_FIELDS = ("question", "answer")
LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
COMPRESSIONS = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}
# GSM8K questions and answers are under 2,000 characters; a field past this is not a GSM8K row, and tokenizing it
# would cost minutes and gigabytes before failing
MAX_FIELD_CHARS = 100_000


def split_suffix(path: Path) -> tuple[str, str]:
    """('.jsonl', '.xz') for data.jsonl.xz, ('.jsonl', '') for data.jsonl."""
    suffixes = [x.lower() for x in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        return (suffixes[-2] if len(suffixes) > 1 else ""), suffixes[-1]
    return (suffixes[-1] if suffixes else ""), ""


def open_text(path: Path):
    """A local data file as text, decompressed by its suffix (.gz, .xz, .bz2)."""
    return COMPRESSIONS.get(split_suffix(Path(path))[1], open)(path, "rt", encoding="utf-8")


@dataclass(frozen=True)
class DataSource:
    """How lm-eval's task config should load the test rows and the few-shot rows."""

    dataset_path: str
    dataset_name: str | None = None
    dataset_kwargs: dict = field(default_factory=dict)
    test_split: str = "test"
    fewshot_split: str | None = "train"
    label: str = ""

    def task_overrides(self) -> dict:
        out = {"dataset_path": self.dataset_path, "dataset_name": self.dataset_name, "test_split": self.test_split,
               "dataset_kwargs": self.dataset_kwargs}
        if self.fewshot_split:
            out["fewshot_split"] = self.fewshot_split
            out["training_split"] = self.fewshot_split
        return out


def looks_local(spec: str) -> bool:
    p = Path(spec)
    return split_suffix(p)[0] in LOCAL_SUFFIXES or p.exists() or spec.startswith((".", "/", "~"))


def json_objects(path: Path, who: str):
    """(line number, object) for each non-blank line of a JSONL file (compressed by suffix too); a bad line, a binary
    or unreadable file is one UsageError naming it."""
    lineno = 0
    try:
        with open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UsageError(f"{who} {path} line {lineno}: not valid JSON ({e.msg})")
                if not isinstance(row, dict):
                    raise UsageError(f"{who} {path} line {lineno}: expected a JSON object")
                yield lineno, row
    except UnicodeDecodeError:
        raise UsageError(f"{who} {path} line {lineno + 1}: not UTF-8 text (a binary file?)")
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise UsageError(f"{who} {path}: cannot read it ({getattr(e, 'strerror', None) or e})")


def validate_rows(path: Path) -> int:
    """Check a local file has GSM8K's question/answer string fields; return its row count."""
    suffix, compression = split_suffix(path)
    kind = LOCAL_SUFFIXES.get(suffix)
    if kind is None or (kind == "parquet" and compression):
        raise UsageError(f"--data {path}: unknown file type {''.join(path.suffixes)!r} (use .jsonl, .jsonl.gz, "
                         ".jsonl.xz or .parquet)")
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:
            raise UsageError(f"--data {path}: not a readable parquet file ({e})")
        missing = [f for f in REQUIRED_FIELDS if f not in table.column_names]
        if missing:
            raise UsageError(f"--data {path}: missing column(s) {', '.join(missing)}")
        for name in REQUIRED_FIELDS:
            for i, value in enumerate(table.column(name).to_pylist()):
                if not isinstance(value, str):
                    raise UsageError(f"--data {path} row {i + 1}: field {name!r} missing or not a string")
                if len(value) > MAX_FIELD_CHARS:
                    raise UsageError(f"--data {path} row {i + 1}: field {name!r} has {len(value):,} characters "
                                     f"(at most {MAX_FIELD_CHARS:,}; GSM8K rows are under 2,000)")
        return table.num_rows
    n = 0
    for lineno, row in json_objects(path, "--data"):
        for name in REQUIRED_FIELDS:
            if not isinstance(row.get(name), str):
                raise UsageError(f"--data {path} line {lineno}: field {name!r} missing or not a string")
            if len(row[name]) > MAX_FIELD_CHARS:
                raise UsageError(f"--data {path} line {lineno}: field {name!r} has {len(row[name]):,} characters "
                                 f"(at most {MAX_FIELD_CHARS:,}; GSM8K rows are under 2,000)")
        n += 1
    if n == 0:
        raise UsageError(f"--data {path}: no rows")
    return n


def resolve(data: str | None, fewshot_data: str | None, num_fewshot: int) -> DataSource:
    """Turn --data / --fewshot-data into a DataSource, validating local files. No --data: the embedded GSM8K copy
    (its train split gives the shots); a hub id only when asked for."""
    embedded = not data
    if embedded:
        data = str(EMBEDDED_TEST)
    elif not looks_local(data):
        return DataSource(dataset_path=data, dataset_name=HUB_DATA_CONFIG if data == HUB_DATA else None,
                          label=data if data != HUB_DATA else f"{HUB_DATA} ({HUB_DATA_CONFIG}, test)")
    test = Path(data).expanduser()
    if test.is_dir():
        raise UsageError(f"--data {data}: is a folder; give a .jsonl or .parquet file (e.g. DIR/test.jsonl)")
    if not test.is_file():
        raise UsageError(f"--data {data}: no such file")
    if not embedded:  # the embedded copy is known good; checking it costs a second
        validate_rows(test)
    files = {"test": str(test.resolve())}
    fewshot_split = None
    if num_fewshot > 0:
        neighbour = test.with_name("train" + "".join(split_suffix(test)))  # train.jsonl.xz next to test.jsonl.xz
        shots = Path(fewshot_data).expanduser() if fewshot_data else neighbour
        if shots.is_dir():
            raise UsageError(f"--fewshot-data {shots}: is a folder; give a .jsonl or .parquet file")
        if not shots.is_file():
            raise UsageError(f"--fewshot-data {shots}: no such file (few-shot examples come from GSM8K's train rows; "
                             "pass --fewshot-data FILE or --fewshot 0)")
        if not (embedded and not fewshot_data):
            validate_rows(shots)
        files["train"] = str(shots.resolve())
        fewshot_split = "train"
    kind = LOCAL_SUFFIXES[split_suffix(test)[0]]
    return DataSource(dataset_path=kind, dataset_kwargs={"data_files": files}, fewshot_split=fewshot_split,
                      label=EMBEDDED_LABEL if embedded else str(test))
