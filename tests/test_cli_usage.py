"""Bad input: exactly one line on stderr, `evalharness: error: ...`, exit code 2, and no report folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from evalharness.cli import main
from evalharness.verdict import EXIT_USAGE

ROW = {"question": "Tom has 3 apples and buys 2 more. How many apples does he have?",
       "answer": "3 + 2 = <<3+2=5>>5\n#### 5"}


@pytest.fixture
def good_data(tmp_path):
    path = tmp_path / "data" / "test.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps(ROW) + "\n" + json.dumps(ROW) + "\n", encoding="utf-8")
    return path


def run_cli(args, out, env=None):
    """The installed entry point's code path, in a fresh interpreter: real stdout, stderr and exit status."""
    proc = subprocess.run([sys.executable, "-m", "evalharness", "gsm8k", *args, "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    return proc.returncode, proc.stdout, proc.stderr


def assert_usage_error(rc, stdout, stderr, needle, out):
    lines = stderr.splitlines()
    assert rc == EXIT_USAGE == 2, (rc, stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("evalharness: error: "), lines[0]
    assert needle in lines[0], lines[0]
    assert stdout == ""
    assert not out.exists(), "a usage error must not start a report"


def bad_inputs(tmp_path, good_data):
    malformed = tmp_path / "bad" / "test.jsonl"
    malformed.parent.mkdir()
    malformed.write_text(json.dumps(ROW) + "\n" + '{"question": "no answer here"}\n', encoding="utf-8")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(ROW) + "\n{not json\n", encoding="utf-8")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text('{"model_type": "llama"}')
    (no_weights / "pytorch_model.bin").write_bytes(b"pickled weights are never loaded")
    binary = tmp_path / "blob.jsonl"
    binary.write_bytes(bytes(range(256)) * 8)
    data = ["--data", str(good_data), "--fewshot", "0"]
    return {
        "binary data file": (["--data", str(binary), "--fewshot", "0"], "not UTF-8 text"),
        "data is a folder": (["--data", str(good_data.parent)], "is a folder"),
        "unreachable hub model": (["--model", "nobody-evalharness/no-such-model", *data], "Hugging Face hub"),
        "negative timeout": (["--timeout-s=-5", *data], "--timeout-s: must be a positive number"),
        "zero timeout": (["--timeout-s", "0", *data], "--timeout-s: must be a positive number"),
        "zero limit": (["--limit", "0", *data], "--limit: must be a positive integer"),
        "history inside a file": (["--history", str(good_data / "history.jsonl"), *data], "--history"),
        "missing data file": (["--data", str(tmp_path / "nope" / "test.jsonl")], "no such file"),
        "missing train file": (["--data", str(good_data), "--fewshot", "2"], "--fewshot-data"),
        "row without answer": (["--data", str(malformed), "--fewshot", "0"], "line 2: field 'answer'"),
        "row not JSON": (["--data", str(broken), "--fewshot", "0"], "line 2: not valid JSON"),
        "unknown mode": (["--graphs", "off,turbo", *data], "unknown mode 'turbo'"),
        "zero max-bt": (["--max-bt", "0", *data], "--max-bt"),
        "negative max-bt": (["--max-bt=-128", *data], "--max-bt"),
        "bad injection": (["--inject", "on=melt", *data], "--inject"),
        "model folder missing": (["--model", str(tmp_path / "no-such-model"), *data], "no such folder"),
        "model without safetensors": (["--model", str(no_weights), *data], "no .safetensors weights"),
        "gguf file missing": (["--model", str(no_weights), "--gguf-file", "x.gguf", *data], "not found"),
        "unknown option": (["--graphs", "off", "--frobnicate", *data], "unrecognized arguments"),
        "chat with shots": (["--data", str(good_data), "--prompt", "chat", "--fewshot", "3"], "zero-shot"),
        "unknown oracle": (["--oracle", "psychic", *data], "invalid choice: 'psychic'"),
        "zero repeat": (["--repeat", "0", *data], "--repeat: must be a positive integer"),
    }


CASES = ["binary data file", "data is a folder", "unreachable hub model", "negative timeout", "zero timeout",
         "zero limit", "history inside a file", "missing data file", "missing train file", "row without answer", "row not JSON", "unknown mode",
         "zero max-bt", "negative max-bt", "bad injection", "model folder missing", "model without safetensors",
         "gguf file missing", "unknown option", "chat with shots", "unknown oracle", "zero repeat"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, good_data):
    args, needle = bad_inputs(tmp_path, good_data)[case]
    out = tmp_path / "report"
    assert_usage_error(*run_cli(args, out), needle, out)


def test_in_process_main_returns_2(tmp_path, good_data, capsys):
    out = tmp_path / "report"
    rc = main(["gsm8k", "--graphs", "off,on,bogus", "--data", str(good_data), "--out", str(out)])
    captured = capsys.readouterr()
    assert_usage_error(rc, captured.out, captured.err, "unknown mode 'bogus'", out)
    rc = main(["gsm8k", "--max-bt", "128:64:0", "--out", str(out)])
    captured = capsys.readouterr()
    assert_usage_error(rc, captured.out, captured.err, "--max-bt", out)
    rc = main([])
    captured = capsys.readouterr()
    assert rc == 2 and captured.err.startswith("evalharness: error:") and len(captured.err.splitlines()) == 1


@pytest.mark.parametrize("where", ["existing file", "inside a file"])
def test_unusable_out_folder_is_one_line_and_exit_2(where, tmp_path, good_data):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    out = blocker if where == "existing file" else blocker / "report"
    # an empty model cache, as on a fresh machine: --out is refused before the default model would be fetched
    rc, stdout, stderr = run_cli(["--data", str(good_data), "--fewshot", "0", "--graphs", "off"], out,
                                 env={"EVALHARNESS_CACHE": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1"})
    assert rc == 2 and stdout == "" and len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith(f"evalharness: error: --out {out}: "), stderr
    assert blocker.read_text() == "not a folder"


def test_corrupt_settings_on_resume_is_one_line(tmp_path, capsys):
    (tmp_path / "settings.json").write_text('{"format": 1, "settings": {"limit"')
    assert main(["gsm8k", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "settings.json is not readable JSON" in err
    (tmp_path / "settings.json").write_text('{"format": 1, "settings": [1, 2]}')
    assert main(["gsm8k", "--resume", str(tmp_path)]) == 2
    assert "settings.json is damaged" in capsys.readouterr().err


def test_version(capsys):
    from evalharness import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"evalharness {__version__}"
