"""GPU-only checks (marked `gpu`): they skip, with the reason, on a machine without CUDA."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch-flash is CUDA-only)")]


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048)
    return LlamaForCausalLM(cfg).to("cuda", torch.bfloat16).eval()


def _first_forward_logits(model, attn: str, prompts: list[list[int]]):
    """Logits of the first CB forward (one prefill batch of all prompts), graphs off."""
    from transformers import ContinuousBatchingConfig, GenerationConfig

    model.set_attn_implementation(attn)
    captured = []
    handle = model.register_forward_hook(lambda m, a, out: captured.append(out.logits.float().clone()))
    try:
        model.generate_batch(inputs=prompts, generation_config=GenerationConfig(max_new_tokens=1, do_sample=False,
                                                                                  eos_token_id=-1),
                             continuous_batching_config=ContinuousBatchingConfig(max_batch_tokens=1024,
                                                                                 use_cuda_graph=False),
                             progress_bar=False)
    finally:
        handle.remove()
    return captured[0]


def test_torch_flash_matches_paged_sdpa_for_one_forward():
    from evalharness.engine import torch_flash

    name = torch_flash.register()
    model = _tiny_llama()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 512, (n,), generator=g).tolist() for n in (37, 5, 120, 64)]  # varied lengths, GQA
    ref = _first_forward_logits(model, "paged|sdpa", prompts)
    got = _first_forward_logits(model, name, prompts)
    assert got.shape == ref.shape
    scale = ref.abs().max().item()
    assert (got - ref).abs().max().item() <= 0.02 * scale + 1e-2, "torch-flash differs from paged|sdpa beyond bf16"
    assert torch.equal(got.argmax(-1), ref.argmax(-1)) or (got.argmax(-1) != ref.argmax(-1)).float().mean() < 0.02
