"""Where the GSM8K rows come from: a Hugging Face hub id, or a local JSONL / parquet file.

Local files are checked row by row before anything runs (one clear error line for a malformed row); the rows are
then read by `datasets` through lm-eval, exactly as a hub dataset would be.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .config import UsageError

DEFAULT_DATA = "openai/gsm8k"
DEFAULT_DATA_CONFIG = "main"
REQUIRED_FIELDS = ("question", "answer")
LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


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
    return p.suffix.lower() in LOCAL_SUFFIXES or p.exists() or spec.startswith((".", "/", "~"))


def json_objects(path: Path, who: str):
    """(line number, object) for each non-blank line of a JSONL file; a bad line is one UsageError naming it."""
    with open(path, encoding="utf-8") as f:
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


def validate_rows(path: Path) -> int:
    """Check a local file has GSM8K's question/answer string fields; return its row count."""
    kind = LOCAL_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UsageError(f"--data {path}: unknown file type {path.suffix!r} (use .jsonl or .parquet)")
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:
            raise UsageError(f"--data {path}: not a readable parquet file ({e})")
        missing = [f for f in REQUIRED_FIELDS if f not in table.column_names]
        if missing:
            raise UsageError(f"--data {path}: missing column(s) {', '.join(missing)}")
        return table.num_rows
    n = 0
    for lineno, row in json_objects(path, "--data"):
        for name in REQUIRED_FIELDS:
            if not isinstance(row.get(name), str):
                raise UsageError(f"--data {path} line {lineno}: field {name!r} missing or not a string")
        n += 1
    if n == 0:
        raise UsageError(f"--data {path}: no rows")
    return n


def resolve(data: str | None, fewshot_data: str | None, num_fewshot: int) -> DataSource:
    """Turn --data / --fewshot-data into a DataSource, validating local files."""
    data = data or DEFAULT_DATA
    if not looks_local(data):
        return DataSource(dataset_path=data, dataset_name=DEFAULT_DATA_CONFIG if data == DEFAULT_DATA else None,
                          label=data if data != DEFAULT_DATA else f"{DEFAULT_DATA} ({DEFAULT_DATA_CONFIG}, test)")
    test = Path(data).expanduser()
    if not test.is_file():
        raise UsageError(f"--data {data}: no such file")
    validate_rows(test)
    files = {"test": str(test.resolve())}
    fewshot_split = None
    if num_fewshot > 0:
        shots = Path(fewshot_data).expanduser() if fewshot_data else test.with_name("train" + test.suffix)
        if not shots.is_file():
            raise UsageError(f"--fewshot-data {shots}: no such file (few-shot examples come from GSM8K's train rows; "
                             "pass --fewshot-data FILE or --fewshot 0)")
        validate_rows(shots)
        files["train"] = str(shots.resolve())
        fewshot_split = "train"
    kind = LOCAL_SUFFIXES[test.suffix.lower()]
    return DataSource(dataset_path=kind, dataset_kwargs={"data_files": files}, fewshot_split=fewshot_split,
                      label=str(test))
