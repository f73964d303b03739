"""A decode-only graph mode is left out of the plan where the engine gives the model no decode fast path.

transformers' CB engine turns its decode fast path (block tables, and so decode CUDA graphs) off for models with
sliding-window layers (Gemma 3): a `decode` graph run there captures no graph, and it and its twin only cost time
before the verdict calls the cell SKIPPED. The engine's probe says, from the model's configuration alone
(engine/transformers_cb.decode_path, read with this transformers), whether the model has the path; plan.py then
schedules no decode job and the cell is SKIPPED with the reason. Tested: the configuration reader (config.json, and a
GGUF through its metadata-only copy, against transformers' own full read), the decision on real configurations, and
the plan and verdicts through the fake engine and through the real probe.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from evalharness.engine import probe_engine
from evalharness.engine.model_config import load_config, metadata_only_gguf
from evalharness.engine.transformers_cb import decode_path
from evalharness.fake_engine import FakeEngine
from evalharness.pipeline import evaluate
from evalharness.plan import prepare, prepare_jobs
from evalharness.settings import make

GRAPHS = ["off", "on", "varlen", "decode"]


# --- reading the configuration ---------------------------------------------------------------------------------

def write_gguf(path, arch: str, sliding_window: int | None, n_tokens: int = 3000, vocab_size: bool = False):
    """A small GGUF as llama.cpp writes one: the architecture's metadata, a tokenizer's arrays, one tensor."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_block_count(6)
    w.add_context_length(2048)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_key_length(16)
    w.add_value_length(16)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    if sliding_window is not None:
        w.add_sliding_window(sliding_window)
    if vocab_size:
        w.add_vocab_size(n_tokens)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"tok{i}" for i in range(n_tokens)])
    w.add_token_scores([float(-i) for i in range(n_tokens)])
    w.add_token_types([1] * n_tokens)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_tensor("token_embd.weight", np.zeros((n_tokens, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def full_read(folder, name) -> dict:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(folder), gguf_file=name).to_dict()
    cfg.pop("_name_or_path")
    return cfg


@pytest.mark.parametrize("arch,window,vocab", [("gemma3", 512, False), ("llama", None, False), ("llama", None, True)])
def test_gguf_metadata_copy_reads_as_the_whole_file(tmp_path, arch, window, vocab):
    src = write_gguf(tmp_path / "m.gguf", arch, window, vocab_size=vocab)
    copy = tmp_path / "copy" / "meta.gguf"
    copy.parent.mkdir()
    metadata_only_gguf(src, copy)
    assert copy.stat().st_size < 2000 < src.stat().st_size // 100  # no token list, no tensor
    cfg = load_config({"path": str(tmp_path), "gguf_file": "m.gguf"}).to_dict()
    cfg.pop("_name_or_path")
    assert cfg == full_read(tmp_path, "m.gguf")
    assert cfg["vocab_size"] == 3000 and cfg["num_hidden_layers"] == 6  # counted from the token list, or read


def test_gguf_header_reads_what_gguf_reader_reads(tmp_path):
    from gguf import GGUFReader

    from evalharness.gguf_header import LongArray, read_header

    path = write_gguf(tmp_path / "m.gguf", "gemma3", 512, n_tokens=5000)
    h, reader = read_header(path), GGUFReader(str(path))
    stored = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}  # the reader's own header entries
    assert list(h.fields) == list(stored)
    for key, f in stored.items():
        if isinstance(h.fields[key], LongArray):  # counted, not decoded
            assert len(h.fields[key]) == len(f.data) == 5000
        else:
            assert h.fields[key] == pytest.approx(f.contents()), key
    assert h.tensors == [(t.name, tuple(int(d) for d in t.shape)) for t in reader.tensors] == [
        ("token_embd.weight", (64, 5000))]


def test_gguf_metadata_copy_refuses_what_is_not_a_gguf(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"GGML" + bytes(60))
    with pytest.raises(ValueError, match="not a GGUF"):
        metadata_only_gguf(tmp_path / "x.gguf", tmp_path / "y.gguf")
    write_gguf(tmp_path / "m.gguf", "llama", None)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes((tmp_path / "m.gguf").read_bytes()[:5000])  # inside the token list
    with pytest.raises(ValueError, match="damaged|past the end"):  # a file cut short
        metadata_only_gguf(cut, tmp_path / "y.gguf")


def config_folder(tmp_path, name: str, cfg: dict):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    return {"path": str(folder), "gguf_file": None, "dtype": "fp32", "trust_remote_code": False}


def gemma3_config() -> dict:
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=32).to_dict()


def llama_config() -> dict:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2).to_dict()


# Qwen2.5's config.json as published: a sliding_window value with use_sliding_window false (full attention)
QWEN25 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 384,
          "max_position_embeddings": 32768, "sliding_window": 32768, "use_sliding_window": False,
          "max_window_layers": 2}


def test_decode_path_as_transformers_decides_it(tmp_path):
    gemma = decode_path(config_folder(tmp_path, "gemma", gemma3_config()))
    assert gemma == {"available": False, "layer_types": ["full_attention", "sliding_attention"],
                     "blocked": ["sliding_attention"]}
    assert decode_path(config_folder(tmp_path, "llama", llama_config())) == {
        "available": True, "layer_types": ["full_attention"], "blocked": []}
    # a sliding_window in config.json is not a sliding-window model: transformers reads use_sliding_window
    assert decode_path(config_folder(tmp_path, "qwen", QWEN25))["available"] is True
    # a GGUF, through its metadata copy
    write_gguf(tmp_path / "g.gguf", "gemma3", 512)
    assert decode_path({"path": str(tmp_path), "gguf_file": "g.gguf"})["available"] is False


def test_decode_path_unknown_when_unreadable(tmp_path):
    missing = decode_path({"path": str(tmp_path / "nothing"), "gguf_file": None})
    assert missing["available"] is None and missing["error"]
    remote = decode_path({**config_folder(tmp_path, "r", llama_config()), "trust_remote_code": True})
    assert remote["available"] is None and "remote code" in remote["error"]


def test_probe_of_another_interpreter_takes_the_model(tmp_path):
    """--engine PATH: the decision is that interpreter's transformers', through the worker's --probe."""
    info = probe_engine(sys.executable, None, model=config_folder(tmp_path, "gemma", gemma3_config()))
    assert info["decode_path"]["available"] is False and info["tuple_graphs"] is True
    assert "decode_path" not in probe_engine(sys.executable, None)


# --- the plan and the verdicts -----------------------------------------------------------------------------------

MODEL = {"path": "fake-model", "gguf_file": None, "dtype": "fp32", "trust_remote_code": False, "label": "fake"}


def settings(tmp_path, **kw):
    base = dict(data=None, limit=8, fewshot=0, max_new_tokens=48, out=tmp_path / "report", progress=False,
                attns=["torch-flash"], modes=GRAPHS)
    return make(**{**base, **kw})


@pytest.fixture(scope="module")
def right(tmp_path_factory):
    s = settings(tmp_path_factory.mktemp("task"))
    task = prepare(s, MODEL)[2]
    return {prompt: target.split("####")[-1].strip() for prompt, target in zip(task.prompts, task.targets())}


def planned(p) -> dict[str, list[tuple]]:
    """Per mode, the graph settings and padding of the jobs that serve it."""
    out: dict[str, list[tuple]] = {}
    for job in p.jobs:
        for served in p.plan.served_by(job.key):
            out.setdefault(served, []).append((job.engine.cuda_graph, job.engine.force_padding))
    return out


@pytest.mark.parametrize("has_path", [True, False])
def test_plan_leaves_out_decode_without_a_decode_path(tmp_path, has_path):
    engine = FakeEngine(decode_path=has_path)
    p = prepare_jobs(settings(tmp_path), cuda=True, model=MODEL, probes={"default": engine.probe(MODEL)},
                     interpreters={"default": (sys.executable, None)})
    jobs = planned(p)
    assert jobs["on"] == [((True, True), False)] and jobs["varlen"] == [((True, False), False)]
    assert ("decode" in jobs) is has_path and ("decode twin" in jobs) is has_path
    assert len(p.jobs) == (6 if has_path else 4)  # off, on, varlen, on+varlen's twin (+ decode and its twin)
    if has_path:
        assert jobs["decode"] == [((False, True), False)] and jobs["decode twin"] == [((False, False), True)]
    else:
        reason = p.unsupported["384/attn=torch-flash/decode"]
        assert "gives this model no decode fast path" in reason and "sliding_attention" in reason


def test_no_decode_path_decode_skipped_and_never_run(tmp_path, right):
    engine = FakeEngine(right, stale_every=5, decode_path=False)
    ev = evaluate(settings(tmp_path), engine=engine, cuda=True, model=MODEL, probes={"default": engine.probe(MODEL)})
    cells = {c["mode"]: c for c in ev.summary.to_json()["cells"]}
    assert cells["decode"]["verdict"] == "SKIPPED" and "no decode fast path" in cells["decode"]["reason"]
    assert cells["decode"]["accuracy"] is None and cells["decode"]["twin_mismatches"] is None
    # on keeps its runs: its varlen graphs are stale here, and the verdict notes that decode captured nothing
    assert cells["on"]["verdict"] == cells["varlen"]["verdict"] == "STALE_GRAPH"
    assert any("no CUDA graph was captured on the decode path" in n for n in cells["on"]["notes"])
    decode_keys = {k for k, cfg in ev.plan.runs.items() if "decode" in " ".join(ev.plan.served_by(k))}
    assert decode_keys and not decode_keys & set(engine.calls) and not decode_keys & set(ev.results)
    assert "no decode fast path" in (tmp_path / "report" / "report.md").read_text()
    assert ev.exit_code == 1  # the stale on/varlen graphs, not the skipped cell


def test_full_attention_model_still_tests_decode(tmp_path, right):
    engine = FakeEngine(right, stale_every=5)
    ev = evaluate(settings(tmp_path), engine=engine, cuda=True, model=MODEL, probes={"default": engine.probe(MODEL)})
    cells = {c["mode"]: c for c in ev.summary.to_json()["cells"]}
    assert cells["decode"]["verdict"] == "STALE_GRAPH" and cells["decode"]["twin_mismatches"] == 8


def test_a_fault_injected_into_decode_keeps_its_runs(tmp_path, right):
    engine = FakeEngine(right, decode_path=False)
    s = settings(tmp_path, modes=["off", "decode"], inject=["decode=perturb"])
    ev = evaluate(s, engine=engine, cuda=True, model=MODEL, probes={"default": engine.probe(MODEL)})
    cell = {c["mode"]: c for c in ev.summary.to_json()["cells"]}["decode"]
    assert cell["verdict"] == "STALE_GRAPH" and cell["twin_mismatches"] == 8  # asked to run, and flagged


def test_unknown_decode_path_plans_as_before(tmp_path):
    probes = {"default": {"transformers": "fake", "tuple_graphs": True, "decode_path": {"available": None}}}
    p = prepare_jobs(settings(tmp_path), cuda=True, model=MODEL, probes=probes,
                     interpreters={"default": (sys.executable, None)})
    assert "decode" in planned(p) and not p.unsupported


def test_real_probe_decides_from_the_model_folder(tmp_path, right):
    """No probe given: the plan asks this interpreter's transformers, which reads the model folder's config.json."""
    model = {**config_folder(tmp_path, "gemma", gemma3_config()), "label": "tiny gemma 3"}
    engine = FakeEngine(right)
    ev = evaluate(settings(tmp_path, modes=["off", "decode"]), engine=engine, cuda=True, model=model)
    cell = {c["mode"]: c for c in ev.summary.to_json()["cells"]}["decode"]
    assert cell["verdict"] == "SKIPPED" and "sliding_attention" in cell["reason"]
    assert len(engine.calls) == 1  # `off` alone
    doc = ev.summary.to_json()
    assert [r["served"] for r in doc["runs"].values()] == [["off"]]
    assert doc["engines"]["default"]["decode_path"]["blocked"] == ["sliding_attention"]  # said in summary.json


# --- a real engine run ---------------------------------------------------------------------------------------------

def build_tiny_gemma3(dest):
    """A tiny seeded Gemma 3 (one sliding-window and one full-attention layer) with the tests' tokenizer."""
    import torch
    from conftest import EOS, _training_lines, build_tokenizer
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = build_tokenizer(_training_lines())
    eos = tokenizer.convert_tokens_to_ids(EOS)
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=16,
                              layer_types=["sliding_attention", "full_attention"], max_position_embeddings=4096,
                              bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    torch.manual_seed(1234)
    Gemma3ForCausalLM(config).eval().save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest


@pytest.mark.slow
def test_real_engine_run_of_a_sliding_window_model_schedules_no_decode_job(gsm8k_test, tmp_path):
    model = build_tiny_gemma3(tmp_path / "gemma")
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "evalharness", "gsm8k", "--model", str(model), "--data", str(gsm8k_test),
           "--limit", "2", "--fewshot", "0", "--max-new-tokens", "8", "--max-bt", "128", "--dtype", "fp32",
           "--graphs", "off,decode", "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["modes"]["off"]["verdict"] == "PASS"  # the engine runs the model
    decode = summary["modes"]["decode"]
    assert decode["verdict"] == "SKIPPED" and "no decode fast path" in decode["reason"]
    assert [r["served"] for r in summary["runs"].values()] == [["off"]]  # on a CPU it used to run its own twin too
    assert summary["engines"]["default"]["decode_path"]["blocked"] == ["sliding_attention"]
    modes = {json.loads(line)["mode"] for line in (out / "samples.jsonl").read_text().splitlines()}
    assert modes == {"off"}  # the skipped cell generated nothing
