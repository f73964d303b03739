"""Defaults that depend on the machine: what `evalharness gsm8k` with no other argument runs on a CPU or on a GPU.

Pure: given the settings, the flags the user typed and whether CUDA is there, return the settings to run and the
one line that says what was chosen (None when nothing was).

- Without CUDA no graph is ever captured: the graph modes come back SKIPPED after their padded-eager twins ran,
  and every run goes through the CPU. The first run must finish in a few minutes, so the workload is CPU-sized
  (`CPU_DEFAULTS`), each value only where the user did not give it: fewer rows, zero-shot chat prompts (lm-eval's
  gsm8k with the model's chat template, scored by its flexible-extract filter), short outputs, and fp32, which a CPU
  runs faster than emulated bf16.
- With CUDA the default model is Qwen2.5-Coder-0.5B (embedded, Apache-2.0): on the H200 it scored 0.13 on 600
  GSM8K questions (8-shot CoT) and 0.24 zero-shot, so an accuracy drop has discordant pairs to show up in, and it
  is the model the committed H200 evidence was recorded with. SmolLM2-135M (the CPU default) scores 0.000 on
  GSM8K: a 135M model cannot do grade-school arithmetic, so its accuracy says nothing, while its twin check (token
  for token against the padded-eager twin) does not depend on accuracy at all. Gemma3-270M is barely above zero.
"""

from __future__ import annotations

from . import settings

CPU_DEFAULTS = {"limit": ("--limit", 10), "prompt": ("--prompt", "chat"), "max_new_tokens": ("--max-new-tokens", 32),
                "dtype": ("--dtype", "fp32")}
# a CPU spends its time in the padded-eager twins, whose every step runs a max_bt-sized batch: the time grows with
# (prompt tokens / max_bt + max_new_tokens) per run, so short zero-shot chat prompts and short outputs keep the
# first run to minutes; few-shot prompts (~900 tokens at 5 shots) are kept when --fewshot, --prompt or --task asks
GPU_MODEL = "qwen2.5-coder-0.5b"


def given(argv: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def machine_defaults(s, argv: list[str], cuda: bool):
    """(settings, line): CPU-sized workload without CUDA, a model with a meaningful accuracy with it."""
    if cuda:
        if s.model.name is None and not given(argv, "--model"):
            return (settings.replace(s, model=GPU_MODEL),
                    f"evalharness: CUDA device found: default model {GPU_MODEL} (GSM8K accuracy ~0.1-0.25, so "
                    "accuracy drops can show; --model smollm2-135m for the small one)")
        return s, None
    chosen = {name: value for name, (flag, value) in CPU_DEFAULTS.items() if not given(argv, flag)}
    # the task's own prompt, or shots asked for: not the zero-shot chat style
    if s.workload.task or given(argv, "--fewshot"):
        chosen.pop("prompt", None)
    if not chosen:
        return s, None
    flags = " ".join(f"{CPU_DEFAULTS[name][0]} {value}" for name, value in chosen.items())
    return (settings.replace(s, **chosen),
            f"evalharness: no CUDA device: CPU-sized defaults {flags} (graph modes will be SKIPPED; give these "
            "options to override)")
