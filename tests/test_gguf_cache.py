"""The dequantized GGUF cache: a copy is published only when it reloads bit-identically (weights, config,
tokenizer), is reused afterwards, and generates the same tokens as the GGUF itself (the embedded SmolLM2)."""

from __future__ import annotations

import json

import pytest


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
