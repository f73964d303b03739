"""The dequantized GGUF cache: a copy is published only when it reloads bit-identically (weights, config,
tokenizer), is reused afterwards, and generates the same tokens as the GGUF itself (the embedded SmolLM2, Gemma 3);
workers that wait for the builder load after releasing the lock; a tokenizer whose class rebuilds a different backend
from tokenizer.json (transformers 5.17's GGUF Gemma) is reloaded with its backend verbatim."""

from __future__ import annotations

import json
import threading

import pytest

from evalharness.engine import gguf_cache


def test_differences_finds_a_single_flipped_bit_a_config_change_and_nothing_in_an_exact_copy(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evalharness.engine.gguf_cache import differences

    def load():
        return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), AutoTokenizer.from_pretrained(
            tiny_llama)

    (a, tok_a), (b, tok_b) = load(), load()
    assert differences(a, b, tok_a, tok_b) == []
    with torch.no_grad():
        w = b.model.layers[1].mlp.up_proj.weight
        bits = w.view(torch.int32)
        bits[3, 5] ^= 1  # the lowest mantissa bit of one weight
    assert differences(a, b, tok_a, tok_b) == ["model.layers.1.mlp.up_proj.weight: values differ"]
    c, tok_c = load()
    c.config.rope_theta = 1.0
    assert any(d.startswith("config rope") for d in differences(a, c, tok_a, tok_c))
    # 0-dim buffers (Gemma 3 has scalar ones) are compared too, bit for bit, without failing to view them as bytes
    d, tok_d = load()
    a.register_buffer("scalar", torch.tensor(2.0, dtype=torch.bfloat16))
    d.register_buffer("scalar", torch.tensor(2.0, dtype=torch.bfloat16))
    assert differences(a, d, tok_a, tok_d) == []
    d.scalar.fill_(2.015625)  # one bf16 step
    assert differences(a, d, tok_a, tok_d) == ["scalar: values differ"]


@pytest.mark.slow
def test_smollm2_gguf_cache_is_verified_reused_and_generates_the_same_tokens(smollm2, tmp_path, monkeypatch):
    import torch

    from evalharness import models
    from evalharness.engine import gguf_cache
    from evalharness.engine.transformers_cb import load_model

    monkeypatch.setenv("EVALHARNESS_CACHE", str(tmp_path))
    spec = {"path": str(smollm2), "gguf_file": models.EMBEDDED["smollm2-135m"].file, "dtype": "bf16"}
    built, tok = load_model(spec, "sdpa")
    assert built._evalharness_gguf_cache["built"] is True
    entry = tmp_path / "dequantized"
    verified = json.loads(next(entry.glob("*/verified.json")).read_text())
    assert verified["sha256"] == models.EMBEDDED["smollm2-135m"].sha256 and verified["dtype"] == "bf16"
    hit, _ = load_model(spec, "sdpa")
    assert hit._evalharness_gguf_cache["hit"] is True
    monkeypatch.setenv("EVALHARNESS_GGUF_CACHE", "0")
    direct, direct_tok = load_model(spec, "sdpa")
    assert not hasattr(direct, "_evalharness_gguf_cache")
    assert gguf_cache.differences(direct, hit, direct_tok, tok) == []
    prompts = ["Question: Tom has 3 apples and buys 4 more. How many apples?\nAnswer:", "2 + 2 ="]
    for p in prompts:
        ids = direct_tok(p, return_tensors="pt")
        with torch.no_grad():
            a = direct.generate(**ids, max_new_tokens=12, do_sample=False)
            b = hit.generate(**ids, max_new_tokens=12, do_sample=False)
        assert a.tolist() == b.tolist()


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A model spec whose GGUF file is a few bytes (the loaders are replaced), its cache entry and its lock file."""
    import transformers

    monkeypatch.setenv("EVALHARNESS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "m.gguf").write_bytes(b"stands in for a GGUF file")
    entry = gguf_cache.entry_dir(gguf_cache.file_sha256(folder / "m.gguf"), "bf16", transformers.__version__)
    return {"path": str(folder), "gguf_file": "m.gguf"}, entry, entry.with_name(entry.name + ".lock")


def _held(lock_path) -> bool:
    """Whether anyone holds the lock (a second open of the file cannot take it)."""
    from filelock import FileLock, Timeout

    probe = FileLock(str(lock_path))
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return True
    probe.release()
    return False


def _signalling_lock(monkeypatch, arrivals: list, arrived: threading.Condition):
    """gguf_cache's FileLock, noting each worker that is about to wait for it."""
    from filelock import FileLock

    class Signalling(FileLock):
        def acquire(self, *args, **kwargs):
            with arrived:
                arrivals.append(threading.current_thread().name)
                arrived.notify_all()
            return super().acquire(*args, **kwargs)

    monkeypatch.setattr(gguf_cache, "FileLock", Signalling)


@pytest.mark.parametrize("decision", ["verified", "refused"])
def test_a_worker_that_waited_for_the_builders_decision_loads_after_releasing_the_lock(fake_gguf, monkeypatch,
                                                                                       decision):
    from filelock import FileLock

    spec, entry, lock_path = fake_gguf
    arrivals, arrived = [], threading.Condition()
    _signalling_lock(monkeypatch, arrivals, arrived)
    loads = []

    def fake_load(*args):  # stands in for the slow GGUF or entry load; notes whether the lock is held meanwhile
        loads.append(("entry" if args[0] == entry else "gguf", _held(lock_path)))
        return "model", "tokenizer"

    monkeypatch.setattr(gguf_cache, "from_gguf", fake_load)
    monkeypatch.setattr(gguf_cache, "from_entry", fake_load)
    monkeypatch.setattr(gguf_cache, "build", lambda *a: pytest.fail("a decided entry is built again"))
    entry.parent.mkdir(parents=True, exist_ok=True)
    builder = FileLock(str(lock_path))  # the test is the builder that the worker queues behind
    builder.acquire()
    got = {}
    worker = threading.Thread(target=lambda: got.update(out=gguf_cache.load(spec, "sdpa", None, "bf16")))
    worker.start()
    with arrived:
        assert arrived.wait_for(lambda: arrivals, timeout=30)  # it found no decision and queued on the lock
    if decision == "verified":
        entry.mkdir()
        (entry / "verified.json").write_text(json.dumps({"tokenizer": "saved", "tokenizer_flags": {}}))
    else:
        gguf_cache.refused_file(entry).write_text(json.dumps({"why": ["tokenizer encodes probe 0 differently"]}))
    builder.release()
    worker.join(timeout=30)
    assert loads == [("entry" if decision == "verified" else "gguf", False)]  # loaded, and not under the lock
    _, _, info = got["out"]
    assert info["hit"] is (decision == "verified")
    assert info.get("refused", []) == ([] if decision == "verified" else ["tokenizer encodes probe 0 differently"])


def test_workers_started_together_on_an_empty_cache_build_once_and_the_others_load_outside_the_lock(fake_gguf,
                                                                                                  monkeypatch):
    spec, entry, lock_path = fake_gguf
    arrivals, arrived = [], threading.Condition()
    _signalling_lock(monkeypatch, arrivals, arrived)
    builds, loads = [], []

    def fake_build(model, attn, dtype, dtype_name, gguf, sha, at):
        with arrived:  # publish only once every worker has queued on the lock, so that they all wait for this one
            assert arrived.wait_for(lambda: len(arrivals) == 3, timeout=30)
        builds.append(_held(lock_path))
        tmp = at.with_name(at.name + ".partial")
        tmp.mkdir()
        (tmp / "verified.json").write_text(json.dumps({"tokenizer": "saved", "tokenizer_flags": {}}))
        tmp.rename(at)
        return "model", "tokenizer", {"entry": str(at), "hit": False, "built": True}

    def fake_entry(at, *args):
        loads.append(_held(lock_path))
        return "model", "tokenizer"

    monkeypatch.setattr(gguf_cache, "build", fake_build)
    monkeypatch.setattr(gguf_cache, "from_entry", fake_entry)
    monkeypatch.setattr(gguf_cache, "from_gguf", lambda *a: pytest.fail("a verified entry is not loaded"))
    results = []
    workers = [threading.Thread(target=lambda: results.append(gguf_cache.load(spec, "sdpa", None, "bf16")[2]))
               for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=30)
    assert builds == [True]  # one build, under the lock
    assert loads == [False, False]  # the two others: from the entry, the lock released
    assert sorted(bool(r.get("built")) for r in results) == [False, False, True]
    assert sum(r["hit"] for r in results) == 2


def _unigram_gemma_tokenizer():
    """A GemmaTokenizer holding a Unigram backend, as transformers 5.17 converts a Gemma GGUF vocabulary: its class
    builds a BPE backend in __init__, so a plain reload of its tokenizer.json splits words into characters."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import GemmaTokenizer

    pieces = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "▁Question", "Question", "▁Answer", ":", "▁", "Qu", "est",
              "ion", "▁An", "sw", "er"]
    pieces += [c for c in dict.fromkeys("QuestionAnswer:abcdefghijklmnopqrstuvwxyz0123456789.,") if c not in pieces]
    vocab = [(p, (5.0 if len(p) > 3 and not p.startswith("<") else 0.0) - i / 10) for i, p in enumerate(pieces)]
    backend = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse()])
    return GemmaTokenizer(tokenizer_object=backend, add_bos_token=True)


def test_a_tokenizer_that_does_not_reload_as_itself_is_found_and_loaded_with_its_backend_verbatim(tmp_path):
    tok = _unigram_gemma_tokenizer()
    assert tok.convert_ids_to_tokens(tok("Question: Answer")["input_ids"]) == ["<bos>", "Question", ":", "▁Answer"]
    tok.save_pretrained(tmp_path)
    flags = gguf_cache.tokenizer_flags(tok)
    assert flags == {"add_bos_token": True, "add_eos_token": False}
    saved = gguf_cache.load_tokenizer(tmp_path, "saved", flags)
    assert "tokenizer encodes probe 0 differently (add_special_tokens=False)" in gguf_cache.tokenizer_differences(
        tok, saved)
    assert len(saved("Question")["input_ids"]) > 2  # the rebuilt BPE backend: characters
    assert gguf_cache.tokenizer_differences(tok, gguf_cache.load_tokenizer(tmp_path, "backend", flags)) == []
    # without the recorded flags, transformers 5 reads add_bos_token False from a saved tokenizer.json
    assert gguf_cache.tokenizer_differences(tok, gguf_cache.load_tokenizer(tmp_path, "backend")) == [
        "tokenizer add_bos_token: True vs False"]


@pytest.mark.parametrize("tokenizer", ["own", "unigram-gemma"])
def test_build_publishes_the_entry_with_the_tokenizer_loader_that_reloads_exactly_and_hits_use_it(
        tiny_llama, tmp_path, monkeypatch, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("EVALHARNESS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "m.gguf").write_bytes(b"stands in for a GGUF file")
    spec = {"path": str(tmp_path / "model"), "gguf_file": "m.gguf"}

    def from_gguf(model, attn, dtype):  # the tiny Llama stands in for the GGUF load; the rest is the real code
        lm = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=dtype, attn_implementation=attn)
        return lm, AutoTokenizer.from_pretrained(tiny_llama) if tokenizer == "own" else _unigram_gemma_tokenizer()

    monkeypatch.setattr(gguf_cache, "from_gguf", from_gguf)
    lm, tok, info = gguf_cache.load(spec, "sdpa", torch.float32, "fp32")
    assert info["built"] is True and info["tokenizer"] == ("saved" if tokenizer == "own" else "backend")
    verified = json.loads((gguf_cache.Path(info["entry"]) / "verified.json").read_text())
    assert verified["tokenizer"] == info["tokenizer"] and verified["format"] == gguf_cache.FORMAT
    hit, hit_tok, hit_info = gguf_cache.load(spec, "sdpa", torch.float32, "fp32")
    assert hit_info["hit"] is True
    assert gguf_cache.differences(lm, hit, tok, hit_tok) == []


@pytest.mark.slow
def test_gemma3_gguf_cache_is_verified_and_a_hit_loads_the_same_weights_and_tokenizer(gemma3, tmp_path, monkeypatch):
    """The model whose cache entry was refused on the H200 (transformers 5.17: the tokenizer did not reload as
    itself): built, verified, and a hit gives what the GGUF load gave."""
    import torch

    from evalharness import models

    monkeypatch.setenv("EVALHARNESS_CACHE", str(tmp_path))
    spec = {"path": str(gemma3), "gguf_file": models.EMBEDDED["gemma3-270m"].file, "dtype": "bf16"}
    lm, tok, info = gguf_cache.load(spec, "sdpa", torch.bfloat16, "bf16")
    assert info.get("built") is True, info.get("refused")
    hit, hit_tok, hit_info = gguf_cache.load(spec, "sdpa", torch.bfloat16, "bf16")
    assert hit_info["hit"] is True
    assert gguf_cache.differences(lm, hit, tok, hit_tok) == []
