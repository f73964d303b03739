"""Cost of the stale-constant check per engine step, on the real transformers CB engine on CPU.

Without CUDA no graph is captured or replayed, so the check never fires on its own here. This script runs the tests'
tiny Llama through `generate_batch` with padding forced on (the padded-eager twin's configuration: the launch
constants are exactly what a graph run computes), keeps every step's forward kwargs, then times what the check adds
to a graph step: reading the launch constants (`launch_constants`) and comparing them with a capture's
(`ConstantCheck.on_replay`). Printed: steps, mean generate time per step, mean check time per step, and the ratio.

    python benchmarks/constant_check_overhead.py [--prompts 16] [--new-tokens 32] [--max-bt 128]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import LOCAL_DATA, tiny_llama  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--max-bt", type=int, default=128)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, ContinuousBatchingConfig, GenerationConfig
    from transformers.generation.continuous_batching.input_outputs import ContinuousBatchingIOs

    from evalharness.audit import ConstantCheck
    from evalharness.engine import patches
    from evalharness.engine.audit_hooks import launch_constants

    torch.set_num_threads(2)
    model_dir = tiny_llama(Path(tempfile.mkdtemp()) / "tiny")
    tok = AutoTokenizer.from_pretrained(model_dir)
    lm = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="paged|sdpa").eval()
    rows = [json.loads(line) for line in LOCAL_DATA.read_text().splitlines()[:args.prompts]]
    inputs = [tok(f"Question: {r['question']}\nAnswer:")["input_ids"] for r in rows]

    patches.force_padding(True)
    kept: list = []
    original = ContinuousBatchingIOs.get_model_kwargs

    def keep(self, *a, **kw):
        out = original(self, *a, **kw)
        kept.append(out)
        return out

    ContinuousBatchingIOs.get_model_kwargs = keep
    gen = GenerationConfig(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=-1,
                           pad_token_id=tok.eos_token_id)
    t0 = time.perf_counter()
    lm.generate_batch(inputs=inputs, generation_config=gen, progress_bar=False,
                      continuous_batching_config=ContinuousBatchingConfig(max_batch_tokens=args.max_bt,
                                                                          use_cuda_graph=False))
    generate_s = time.perf_counter() - t0
    steps = len(kept)

    check = ConstantCheck()
    t0 = time.perf_counter()
    for i, kwargs in enumerate(kept):
        constants = launch_constants(kwargs)
        if i == 0:
            check.on_capture(0, "varlen", (0,), constants)
        else:
            check.on_replay(0, i, "varlen", (0,), constants)  # one key for all: every step is compared in full
    check_s = time.perf_counter() - t0
    print(f"steps {steps}; generate {1e3 * generate_s / steps:.3f} ms/step; stale-constant check "
          f"{1e6 * check_s / steps:.1f} us/step ({100 * check_s / generate_s:.3f} % of generate); "
          f"constants per step {len(launch_constants(kept[-1]))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
