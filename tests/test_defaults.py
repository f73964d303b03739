"""Machine-dependent defaults (evalharness.defaults): CPU-sized workload without CUDA, a meaningful model with it,
only where the user gave nothing, said in one line."""

from __future__ import annotations

from evalharness import settings
from evalharness.cli import build_parser
from evalharness.defaults import CPU_DEFAULTS, GPU_MODEL, machine_defaults


def parse(*argv):
    return settings.from_args(build_parser().parse_args(["gsm8k", *argv])), list(argv)


def test_cpu_sized_defaults_where_not_given():
    s, argv = parse("--max-bt", "384")
    out, line = machine_defaults(s, argv, cuda=False)
    assert (out.workload.limit, out.workload.prompt, out.workload.max_new_tokens, out.model.dtype) == (
        10, "chat", 32, "fp32")
    assert line.startswith("evalharness: no CUDA device: CPU-sized defaults --limit 10 --prompt chat "
                           "--max-new-tokens 32 --dtype fp32") and "\n" not in line
    s, argv = parse("--limit", "3", "--prompt", "fewshot", "--max-new-tokens=256", "--dtype", "bf16")
    out, line = machine_defaults(s, argv, cuda=False)
    assert (out.workload.limit, out.workload.prompt, out.workload.max_new_tokens, out.model.dtype, line) == (
        3, "fewshot", 256, "bf16", None)
    s, argv = parse("--fewshot", "2")  # shots asked for: the few-shot prompt stays
    assert machine_defaults(s, argv, cuda=False)[0].workload.prompt == "fewshot"
    s, argv = parse("--limit", "3")
    out, line = machine_defaults(s, argv, cuda=False)
    assert out.workload.limit == 3 and "--limit" not in line and set(CPU_DEFAULTS) - {"limit"} <= set(
        k for k in CPU_DEFAULTS if CPU_DEFAULTS[k][0] in line)


def test_gpu_default_model_only_when_none_given():
    s, argv = parse()
    out, line = machine_defaults(s, argv, cuda=True)
    assert out.model.name == GPU_MODEL and GPU_MODEL in line
    assert (out.workload, out.model.dtype) == (s.workload, s.model.dtype)  # full workload on GPU
    s, argv = parse("--model", "smollm2-135m")
    assert machine_defaults(s, argv, cuda=True) == (s, None)
