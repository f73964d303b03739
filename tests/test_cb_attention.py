"""The attention a run uses is --attn's: the worker names it the way this transformers' CB engine keeps it
(transformers_cb.cb_attention: `sdpa` where the engine takes sdpa as it stands, 5.19+, `paged|sdpa` before) and tells
the engine not to swap it for an installed flash kernel (`auto_switch_to_flash=False`, 5.19+). Checked on a real CB
run of a small random Llama, with a flash kernel made to look installed."""

from __future__ import annotations

import dataclasses
import warnings

import pytest

torch = pytest.importorskip("torch")


def test_sdpa_stays_sdpa_even_where_a_flash_kernel_is_installed(monkeypatch):
    import transformers
    from transformers import ContinuousBatchingConfig, GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.generation.continuous_batching import continuous_api

    from evalharness.engine.transformers_cb import build_cb_config, cb_attention, picks_attention

    new_scheme = "auto_switch_to_flash" in {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    assert picks_attention() is new_scheme
    assert cb_attention("sdpa") == ("sdpa" if new_scheme else "paged|sdpa")
    assert cb_attention("eager") == "paged|eager"
    cb, why = build_cb_config({"max_bt": 64, "cuda_graph": (False, False)}, transformers.__version__, num_blocks=64)
    assert why is None
    if not new_scheme:
        pytest.skip(f"transformers {transformers.__version__} has no auto_switch_to_flash: paged|sdpa keeps sdpa")
    assert cb.auto_switch_to_flash is False

    # a flash kernel "installed": the engine would switch sdpa to it unless told not to
    monkeypatch.setattr(continuous_api, "is_flash_attn_3_available", lambda *a, **k: False)
    monkeypatch.setattr(continuous_api, "is_flash_attn_2_available", lambda *a, **k: True)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    model = LlamaForCausalLM(cfg).eval()
    model.set_attn_implementation(cb_attention("sdpa"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model.generate_batch(inputs=[[1, 2, 3, 4], [5, 6]], continuous_batching_config=cb, progress_bar=False,
                                   generation_config=GenerationConfig(max_new_tokens=3, do_sample=False,
                                                                      eos_token_id=-1))
    assert model.config._attn_implementation == "sdpa"  # not flash_attention_2
    assert all(len(r.generated_tokens) == 3 for r in out.values())
    assert not [w for w in caught if "paged|" in str(w.message)]  # no deprecated name passed
    # left to switch, the engine goes for the "installed" kernel (here it then finds no package): the guard above is
    # what keeps sdpa
    manager = continuous_api.ContinuousBatchingManager.__new__(continuous_api.ContinuousBatchingManager)
    with pytest.raises(ImportError, match="FlashAttention2"):
        manager.switch_to_cb_friendly_attn(model, True)
