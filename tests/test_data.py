"""Local data validation: one clear UsageError for each malformed input, before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalharness.config import UsageError
from evalharness.data import EMBEDDED_DIR, HUB_DATA, MAX_FIELD_CHARS, json_objects, looks_local, resolve, validate_rows

ROW = {"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"}


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_valid_file_counts_rows_and_skips_blank_lines(tmp_path):
    f = write_jsonl(tmp_path / "test.jsonl", [ROW, "", ROW, "   "])
    assert validate_rows(f) == 2


def test_malformed_json_line(tmp_path):
    f = write_jsonl(tmp_path / "test.jsonl", [ROW, ROW, '{"question": "x", "answer": '])
    with pytest.raises(UsageError, match=r"line 3: not valid JSON"):
        validate_rows(f)


@pytest.mark.parametrize("row,needle", [({"question": "q"}, "'answer'"), ({"answer": "a"}, "'question'"),
                                        ({"question": "q", "answer": 4}, "'answer'"),
                                        ({"question": None, "answer": "a"}, "'question'")])
def test_missing_or_non_string_field(tmp_path, row, needle):
    f = write_jsonl(tmp_path / "test.jsonl", [ROW, row])
    with pytest.raises(UsageError, match=r"line 2: field") as e:
        validate_rows(f)
    assert needle in str(e.value)


def test_row_not_an_object(tmp_path):
    f = write_jsonl(tmp_path / "test.jsonl", ['["question", "answer"]'])
    with pytest.raises(UsageError, match="line 1: expected a JSON object"):
        validate_rows(f)


def test_empty_file(tmp_path):
    f = write_jsonl(tmp_path / "test.jsonl", [""])
    with pytest.raises(UsageError, match="no rows"):
        validate_rows(f)


def test_unknown_suffix(tmp_path):
    f = tmp_path / "test.csv"
    f.write_text("question,answer\n")
    with pytest.raises(UsageError, match="unknown file type"):
        validate_rows(f)


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"question": ["q1", "q2"], "answer": ["a1", "a2"]}), good)
    assert validate_rows(good) == 2
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"question": ["q1"]}), bad)
    with pytest.raises(UsageError, match="missing column"):
        validate_rows(bad)
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(UsageError, match="not a readable parquet"):
        validate_rows(junk)


def test_resolve_missing_file(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        resolve(str(tmp_path / "nope.jsonl"), None, 0)


def test_resolve_missing_train_file_for_fewshot(tmp_path):
    test = write_jsonl(tmp_path / "test.jsonl", [ROW])
    with pytest.raises(UsageError, match="--fewshot-data .*train.jsonl: no such file"):
        resolve(str(test), None, 5)
    # zero-shot needs no train rows
    src = resolve(str(test), None, 0)
    assert src.dataset_path == "json" and src.fewshot_split is None
    assert src.dataset_kwargs == {"data_files": {"test": str(test.resolve())}}
    assert "training_split" not in src.task_overrides()


def test_resolve_malformed_train_file(tmp_path):
    test = write_jsonl(tmp_path / "test.jsonl", [ROW])
    write_jsonl(tmp_path / "train.jsonl", [ROW, "not json"])
    with pytest.raises(UsageError, match="train.jsonl line 2: not valid JSON"):
        resolve(str(test), None, 1)


def test_resolve_with_train_file(tmp_path):
    test = write_jsonl(tmp_path / "test.jsonl", [ROW])
    other = write_jsonl(tmp_path / "shots.jsonl", [ROW])
    src = resolve(str(test), str(other), 2)
    assert src.fewshot_split == "train"
    assert src.dataset_kwargs["data_files"] == {"test": str(test.resolve()), "train": str(other.resolve())}
    assert src.task_overrides()["training_split"] == "train"


def test_resolve_hub_ids():
    src = resolve(HUB_DATA, None, 5)
    assert src.dataset_path == HUB_DATA and src.dataset_name == "main"
    other = resolve("someone/gsm8k-copy", None, 5)
    assert other.dataset_path == "someone/gsm8k-copy" and other.dataset_name is None


def test_looks_local(tmp_path):
    assert looks_local("data.jsonl") and looks_local("./x") and looks_local("/abs/path") and looks_local("~/x")
    assert looks_local(str(tmp_path))
    assert not looks_local("openai/gsm8k")


def test_default_data_is_the_embedded_gsm8k_copy_offline(monkeypatch):
    """No --data: the package's own GSM8K test/train files, read by datasets without the hub."""
    import hashlib
    import lzma

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = resolve(None, None, 5)
    assert src.dataset_path == "json" and src.fewshot_split == "train"
    files = src.dataset_kwargs["data_files"]
    assert Path(files["test"]).parent == EMBEDDED_DIR and Path(files["train"]).parent == EMBEDDED_DIR
    import re

    sums = {name: digest for digest, name in
            re.findall(r"`([0-9a-f]{64})  (\w+\.jsonl)`", (EMBEDDED_DIR / "SOURCE.md").read_text())}
    for split in ("test", "train"):  # byte-for-byte the upstream files, as SOURCE.md says
        digest = hashlib.sha256(lzma.decompress(Path(files[split]).read_bytes())).hexdigest()
        assert digest == sums[f"{split}.jsonl"]
    assert "MIT" in (EMBEDDED_DIR / "LICENSE").read_text()
    assert validate_rows(Path(files["test"])) == 1319
    from evalharness.lmeval_task import TaskSpec

    task = TaskSpec(prompt="fewshot", limit=2)  # lm-eval's gsm8k task renders 5-shot prompts from the embedded train split
    assert task.source == src
    assert len(task.prompts) == 2 and task.prompts[0].count("Question:") == 6


def test_compressed_local_file_and_its_train_neighbour(tmp_path):
    import gzip

    test = tmp_path / "test.jsonl.gz"
    test.write_bytes(gzip.compress((json.dumps(ROW) + "\n").encode()))
    (tmp_path / "train.jsonl.gz").write_bytes(gzip.compress((json.dumps(ROW) + "\n").encode()))
    src = resolve(str(test), None, 1)
    assert src.dataset_kwargs["data_files"]["train"] == str((tmp_path / "train.jsonl.gz").resolve())
    assert validate_rows(test) == 1


def test_binary_data_file_is_one_usage_error(tmp_path):
    f = tmp_path / "blob.jsonl"
    f.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UsageError, match="not UTF-8 text"):
        validate_rows(f)
    with pytest.raises(UsageError, match="not UTF-8 text"):
        list(json_objects(f, "compare:"))


def test_data_folder_is_not_a_file(tmp_path):
    with pytest.raises(UsageError, match="is a folder"):
        resolve(str(tmp_path), None, 0)


def test_oversized_field_is_refused_before_tokenizing(tmp_path):
    f = write_jsonl(tmp_path / "test.jsonl", [ROW, {"question": "x" * (MAX_FIELD_CHARS + 1), "answer": "#### 1"}])
    with pytest.raises(UsageError, match="line 2: field 'question' has 100,001 characters"):
        validate_rows(f)
