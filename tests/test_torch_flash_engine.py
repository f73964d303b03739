"""torch-flash inside transformers' continuous-batching engine on CPU, with the decode fast path forced on.

transformers enables the decode fast path only where CUDA is available; here `torch.cuda.is_available` is made to
answer True for that one check (`ensure_decode_fast_path_is_available`), so the engine's real block-table path
(`_paged_decode_forward` / `_flash_attention_forward`) runs our kernel on CPU, unpadded and padded like a graph run's
padded-eager twin. Graphs themselves need a GPU: tests/test_gpu.py.
"""

from __future__ import annotations

import functools
from unittest import mock

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow


@pytest.fixture()
def engine(monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM, modeling_flash_attention_utils
    from transformers.generation.continuous_batching import initialization

    from evalharness.engine import torch_flash

    original = initialization.ensure_decode_fast_path_is_available

    def on_cpu_too(config, cb_config, user_requested):
        with mock.patch("torch.cuda.is_available", return_value=True):
            original(config, cb_config, user_requested)

    monkeypatch.setattr(initialization, "ensure_decode_fast_path_is_available", on_cpu_too)
    calls: list[torch.Tensor] = []
    kernel = torch_flash.flash_attn_with_kvcache

    @functools.wraps(kernel)  # transformers reads the kernel's signature to decide what to pass
    def counting(*args, **kwargs):
        calls.append(kwargs["cache_seqlens"].clone())
        return kernel(*args, **kwargs)

    monkeypatch.setattr(torch_flash, "flash_attn_with_kvcache", counting)
    monkeypatch.setattr(modeling_flash_attention_utils, "_loaded_implementation", None)  # look the kernel up again
    name = torch_flash.install()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 512, (n,), generator=g).tolist() for n in (37, 5, 120, 64, 9)]

    def run(attn: str) -> tuple[dict, int]:
        from transformers import ContinuousBatchingConfig, GenerationConfig

        model.set_attn_implementation(attn)
        cb = ContinuousBatchingConfig(max_batch_tokens=64, use_cuda_graph=False, block_size=16, num_blocks=64)
        out = model.generate_batch(inputs=prompts, continuous_batching_config=cb, progress_bar=False,
                                   generation_config=GenerationConfig(max_new_tokens=12, do_sample=False,
                                                                      eos_token_id=-1))
        return {k: list(v.generated_tokens) for k, v in out.items()}

    return name, run, calls


def test_decode_fast_path_runs_our_kernel_and_matches_paged_sdpa(engine, monkeypatch):
    from transformers.generation.continuous_batching import continuous_api

    from evalharness.engine import patches
    from evalharness.engine.transformers_cb import cb_attention

    name, run, calls = engine
    reference = run(cb_attention("sdpa"))
    assert not calls
    got = run(name)
    assert calls, "the engine never took the decode fast path"
    assert got == reference
    assert all(int(c.min()) >= 0 for c in calls), "unpadded decode batches have no padding rows"

    # padded like a graph run (the twin): decode batches padded to a power of two, padding rows with length -1
    monkeypatch.setattr(continuous_api.ContinuousBatchProcessor, "__init__",
                        continuous_api.ContinuousBatchProcessor.__init__)
    for attr in ("installed", "enabled", "pad_seqlen_k"):  # the padding patch is process-wide: restored after
        monkeypatch.setattr(patches._Padding, attr, getattr(patches._Padding, attr))
    patches.force_padding(None)
    calls.clear()
    padded = run(name)
    assert any(int(c.min()) < 0 for c in calls), "no padded decode batch reached the kernel"
    assert padded == reference
