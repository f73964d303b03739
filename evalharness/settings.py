"""The settings of one `evalharness gsm8k` run: one typed, frozen `Settings`, made of frozen groups by concern
(`s.model`, `s.workload`, `s.matrix`, `s.verdict`, `s.execution`, `s.output`; e.g. `s.model.gguf_file`).

Everything that reads or writes settings is derived from the groups' fields and the `Option` in each field's
metadata (options.py walks the nesting); nothing lists the options by hand:

- the `evalharness gsm8k` / `evalharness plan` parser (`add_arguments`, then `from_args`): flag, help, argparse
  extras, and `parse`, which turns the command line's text into the field's value (raising `UsageError`); each group
  is a section of --help;
- the keys of accuracy suites (`suite_keys`, `from_suite`; accuracy_suites.py): the flag without its dashes;
- which options may accompany `--resume` (`resume_conflicts`, `resume_overrides`): `resume=True`;
- settings.json (store.py's `settings_json`, `settings_from_json`): nested like `Settings` (format 2); the flat
  settings of format 1, keyed by the options' names, are still read.

Adding an option is a one-place change: add a field to the group it concerns with `option("--flag", RAW_DEFAULT,
help=..., parse=...)`, where RAW_DEFAULT is what the command line gives when the flag is absent and `parse(raw)` the
typed value (the field's default is `parse(RAW_DEFAULT)`; parsers are in parsers.py and config.py). Say
`resume=True` if it changes how jobs run but never what they compute, `suite=False` if accuracy suites should not
set it, `path="local"` for a local file or folder (made absolute in settings.json, relative to the suite file in
suites). Then read it as `settings.GROUP.NAME` where it is needed.

The object is frozen: a stage that settles a value (e.g. a `--task`'s prompt style) makes a new one with `replace`,
which takes options by name (`replace(s, prompt="chat")`); `make(**options)` builds one the same way.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from . import options as opts
from .config import ORACLES
from .faults import names as fault_names
from .options import group, option
from .parsers import (absolute_if_local, fraction, number, parse_attns, parse_compile, parse_devices, parse_engines,
                      parse_jobs, parse_max_bt, parse_modes, parse_switch, path_or_none, positive_int, positive_number,
                      resolved_paths, str_or_none)

MPS_CHOICES = ("auto", "on", "off")


def mps_from_json(value):
    """settings.json's `mps`: auto, on or off. Before MPS was the default it was a bool, --mps given or not: not
    given reads as the default, as a settings.json from before `mps` existed does."""
    return ("on" if value else "auto") if isinstance(value, bool) else value


# --- the settings ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSettings:
    """The model and how it is loaded."""

    name: str | None = option("--model", name="model", help="local folder, hub id, or embedded GGUF model: "
                              "smollm2-135m (default), qwen2.5-coder-0.5b, gemma3-270m", path="local",
                              save=absolute_if_local)
    gguf_file: str | None = option("--gguf-file", help="GGUF file inside --model's folder", path="suite")
    dtype: str = option("--dtype", "bf16", choices=("bf16", "fp16", "fp32", "auto"))
    trust_remote_code: bool = option("--trust-remote-code", False, action="store_true",
                                     help="allow model code from the hub (off by default)")


@dataclass(frozen=True)
class WorkloadSettings:
    """The workload: the data, the task and its prompts, the filter that decides `correct`."""

    data: str | None = option("--data", help="hub dataset id (default openai/gsm8k, config main, split test) or a "
                              "local JSONL/parquet file with question/answer fields", path="local",
                              save=absolute_if_local)
    fewshot_data: str | None = option("--fewshot-data", help="local file the few-shot examples come from (default: "
                                      "train.jsonl next to --data)", path="local", save=absolute_if_local)
    limit: int | None = option("--limit", help="first N test rows (default: all)", parse=positive_int("--limit"))
    prompt: str = option("--prompt", "fewshot", choices=("fewshot", "cot", "chat"),
                         help="shorthand for --task evalharness_gsm8k, evalharness_gsm8k_cot or "
                         "evalharness_gsm8k_chat, on the embedded GSM8K copy unless --data is given")
    task: str | None = option("--task", help="an lm-eval generate_until task instead of --prompt: one of ours "
                              "(evalharness_gsm8k, _cot, _chat, _platinum; gsm8k is evalharness_gsm8k), one in an "
                              "--include-path folder, or any lm-eval task name")
    include_path: list[str] = option("--include-path", [], action="append", metavar="DIR", parse=resolved_paths,
                                     suite=False, help="a folder of lm-eval task YAMLs searched for --task "
                                     "(repeatable), as lm_eval --include_path")
    fewshot: int | None = option("--fewshot", help="number of shots (default 5 for fewshot, 8 for cot)",
                                 parse=number("--fewshot", int))
    max_new_tokens: int = option("--max-new-tokens", 256, parse=positive_int("--max-new-tokens"))
    filter: str | None = option("--filter", help="lm-eval filter that decides `correct` (default strict-match; "
                                "flexible-extract for chat)")


@dataclass(frozen=True)
class MatrixSettings:
    """The run matrix: graph modes, max_batch_tokens and the engine axes, engines, injected faults, the replay audit."""

    modes: list[str] = option("--graphs", "off,on,varlen,decode", help="modes: off,on,varlen,decode",
                              parse=parse_modes)
    max_bts: list[int] = option("--max-bt", "384", help="max_batch_tokens: 384, a list 128,256 or a range "
                                "128:1024:128", parse=parse_max_bt)
    attns: list[str] = option("--attn", "sdpa", parse=parse_attns, help="attention backend(s), comma-separated "
                              "(an axis): sdpa, eager, torch-flash, flash_attention_2, flash_attention_3")
    asyncs: list[bool | None] = option("--async", parse=lambda t: parse_switch(t, "--async"), suite=False,
                                       help="async batching axis: on, off or on,off (default: engine's choice)")
    compiles: list[int | None] = option("--compile", parse=parse_compile, suite=False,
                                        help="default_compile_level axis, e.g. 0,1,2 (default: engine's choice)")
    fast_paths: list[bool | None] = option("--decode-fast-path", parse=lambda t: parse_switch(t, "--decode-fast-path"),
                                           suite=False, help="decode fast path axis (max_blocks_per_request): on, "
                                           "off or on,off")
    engines: dict[str, str | None] = option("--engine", [], action="append", metavar="[NAME=]PATH", suite=False,
                                            parse=parse_engines, help="run the workers under a transformers build: a "
                                            "python interpreter, a venv, or a folder holding the package (pip install "
                                            "--target DIR transformers==5.5.4); repeat to compare engines side by "
                                            "side")
    inject: list[str] = option("--inject", [], action="append", metavar="MODE=FAULT", help="inject a fault into one "
                               f"mode's worker: {', '.join(fault_names('fault'))}; or, not a fault, a fix candidate "
                               f"for transformers ({', '.join(fault_names('fix'))}: inject it into every mode, off "
                               f"included) or a probe ({', '.join(fault_names('probe'))}); `evalharness faults` "
                               "describes each")
    audit: str | None = option("--audit", action="store_const", const="first", suite=False,
                               help="re-run every CUDA-graph replay eagerly and name the graph key and launch "
                               "constant of the first mismatch",
                               also=(("--audit-all", "all", "like --audit, keeping every mismatching replay"),))

    @property
    def attn(self) -> str:
        """The first attention backend: the one a single-backend run uses."""
        return self.attns[0]


@dataclass(frozen=True)
class VerdictSettings:
    """The oracle, its confirmation re-runs and the accuracy verdict's thresholds (verdict.py, confirm.py)."""

    oracle: str = option("--oracle", "twin", choices=ORACLES,
                         help="what decides staleness: twin (padded-eager twins, default), constants (the worker's "
                         "stale-constant check alone: graph modes and off, no twins, fast), both")
    confirm: bool = option("--no-confirm", True, action="store_false",
                           help="do not re-run a graph run that differs from its twin (saves one run per flagged "
                           "cell; STALE_GRAPH is then unconfirmed and a non-deterministic engine cannot be told from a "
                           "stale graph)")
    repeat: int = option("--repeat", 1, parse=positive_int("--repeat"), metavar="N",
                         help="run every graph mode N times (distinct jobs), each against the same twin, and report "
                         "how many matched")
    alpha: float = option("--alpha", 0.05, parse=fraction("--alpha"),
                          help="McNemar significance level for ACCURACY_DROP")
    min_drop: float = option("--min-drop", 0.02, parse=number("--min-drop"),
                             help="smallest accuracy drop vs off that counts")


@dataclass(frozen=True)
class ExecutionSettings:
    """How the jobs run: workers, devices, limits, the run cache, progress."""

    jobs: int | str = option("--jobs", parse=parse_jobs, resume=True, suite=False,
                             help="workers at a time, each serving the runs of one patch set with one model load: N "
                             "or auto (as many as GPU memory and CPU cores allow: the default on CUDA; on a CPU 1, or "
                             "one per --devices entry)")
    devices: list[str] | None = option("--devices", parse=parse_devices, resume=True, suite=False,
                                       help="GPUs for the workers, e.g. 0,1,2,3 (one worker per device unless --jobs "
                                       "is larger, then shared round robin)")
    timeout_s: float | None = option("--timeout-s", parse=positive_number("--timeout-s"),
                                     help="a limit on each run's total time (default none: a run is hung when it "
                                     "finishes no request and takes no engine step for 5 min on a GPU, 10 on a CPU)")
    fail_fast: bool = option("--fail-fast", False, action="store_true", suite=False,
                             help="stop a cell's runs at its first twin mismatch: STALE_GRAPH without a "
                             "confirmation re-run (CI that needs only the verdict)")
    mps: str = option("--mps", "auto", action="store_const", const="on", choices=MPS_CHOICES, resume=True,
                      suite=False, load=mps_from_json,
                      help="run the workers through CUDA MPS daemons of this invocation's own, so that workers sharing "
                      "a GPU run their kernels side by side instead of time-slicing it; by default (auto) wherever "
                      "they share one and a daemon starts, otherwise one line says why not; --mps: a daemon that "
                      "cannot start is an error. A job that crashes or fails with a CUDA error under MPS is retried "
                      "outside it, since a GPU fault under MPS reaches every worker of that GPU",
                      also=(("--no-mps", "off", "never MPS: each worker its own CUDA context, the GPU time-sliced"),))
    cache: Path | None = option("--cache", parse=path_or_none, suite=False, load=path_or_none,
                                save=lambda p: None if p is None else str(Path(p).resolve()),
                                help="engine-run cache folder (default OUT/runs); runs already there with the same "
                                "hash are reused, so invocations can share it")
    progress: bool = option("--no-progress", True, action="store_false", resume=True, suite=False)


@dataclass(frozen=True)
class OutputSettings:
    """Where the results go: the report folder and the history file."""

    folder: Path | None = option("--out", name="out", parse=path_or_none, suite=False, save=str_or_none,
                                 load=path_or_none, help="report folder (default reports/<timestamp>-gsm8k/)")
    history: Path | None = option("--history", parse=path_or_none, resume=True, suite=False, metavar="FILE",
                                  save=str_or_none, load=path_or_none, help="append one line per cell to this "
                                  "JSONL history and report drift vs the last passing run on the same "
                                  "model/task/device (drift exits 1)")


@dataclass(frozen=True)
class Settings:
    model: ModelSettings = group(ModelSettings, "the model")
    workload: WorkloadSettings = group(WorkloadSettings, "the workload")
    matrix: MatrixSettings = group(MatrixSettings, "the run matrix")
    verdict: VerdictSettings = group(VerdictSettings, "the oracle and the verdict")
    execution: ExecutionSettings = group(ExecutionSettings, "how the jobs run")
    output: OutputSettings = group(OutputSettings, "the output")
    command: str = ""  # the command line that made these settings (not an option)


def entries() -> dict[str, opts.Entry]:
    return opts.entries(Settings)


def options() -> dict[str, opts.Option]:
    """Option name -> Option, in declaration order (the --help order)."""
    return {name: e.option for name, e in entries().items() if e.option}


def make(**values) -> Settings:
    """Settings from options by name (`make(limit=3, out=...)`), the others at their defaults."""
    return opts.build(Settings, **values)


def replace(s: Settings, **values) -> Settings:
    """`s` with the options given by name changed."""
    return opts.replace(s, **values)


# --- the command line ------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option of `Settings` on `parser`, one section per group, each stored under its name, unparsed."""
    sections: dict[str, argparse._ArgumentGroup] = {}
    for name, e in entries().items():
        opt = e.option
        if opt is None:
            continue
        if e.title not in sections:
            sections[e.title] = parser.add_argument_group(e.title)
        kw: dict = {"dest": name, "default": opt.raw_default, "help": opt.help}
        if opt.action:
            kw["action"] = opt.action
        if opt.action == "store_const":
            kw["const"] = opt.const
        if opt.action in (None, "append"):
            kw["metavar"] = opt.metavar or opt.key.upper()
            if opt.choices:
                kw["choices"] = opt.choices
                del kw["metavar"]
        sections[e.title].add_argument(opt.flag, **kw)
        for flag, const, help in opt.also:
            sections[e.title].add_argument(flag, dest=name, action="store_const", const=const, help=help)


def from_args(args: argparse.Namespace, **given) -> Settings:
    """The Settings of a parsed command line (UsageError on a bad value); `given` options (e.g. command) as is."""
    return make(**{name: opt.value(getattr(args, name)) for name, opt in options().items()}, **given)


def resume_conflicts(args: argparse.Namespace) -> list[str]:
    """The flags given with --resume that may not accompany it (those that change what the jobs compute)."""
    given = {name: getattr(args, name) for name, opt in options().items()
             if not opt.resume and getattr(args, name) != opt.raw_default}
    found = options()
    return sorted(next((flag for flag, const, _ in found[name].also if const == value), found[name].flag)
                  for name, value in given.items())


def resume_flags() -> list[str]:
    return [opt.flag for opt in options().values() if opt.resume]


def resume_overrides(saved: Settings, args: argparse.Namespace, **given) -> Settings:
    """The saved settings, with the options that may accompany --resume taken from the command line where given."""
    changes = {name: opt.value(getattr(args, name)) for name, opt in options().items()
               if opt.resume and getattr(args, name) != opt.raw_default}
    return replace(saved, **changes, **given)


# --- accuracy suites -------------------------------------------------------------------------------------------

def suite_keys() -> dict[str, str]:
    """Suite key -> option name."""
    return {opt.key: name for name, opt in options().items() if opt.suite}


def suite_path_keys() -> list[str]:
    return [opt.key for opt in options().values() if opt.suite and opt.path]


def from_suite(table: dict, **given) -> Settings:
    """Settings from a suite table (keys as `suite_keys`; lists where the command line takes a comma list)."""
    kw = {}
    found = options()
    for key, name in suite_keys().items():
        value = table.get(key)
        if value is None:
            continue
        opt = found[name]
        if opt.action == "append":
            value = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
        elif isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        kw[name] = opt.value(value)
    return make(**{**kw, **given})
