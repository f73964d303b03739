"""`evalharness`: the one entry point. Subcommands: gsm8k (the main job)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .config import FAULTS, UsageError, parse_compile, parse_devices, parse_max_bt, parse_modes, parse_switch
from .verdict import EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        raise UsageError(message)


def _positive_int(name):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise UsageError(f"{name}: {text!r} is not an integer")
        if value <= 0:
            raise UsageError(f"{name}: must be a positive integer, got {value}")
        return value
    return parse


ATTNS = ("sdpa", "eager", "torch-flash", "flash_attention_2", "flash_attention_3")


def parse_attns(text: str) -> list[str]:
    attns = [a.strip() for a in text.split(",") if a.strip()]
    bad = [a for a in attns if a not in ATTNS]
    if not attns or bad:
        raise UsageError(f"--attn: {text!r}: choose from {', '.join(ATTNS)}")
    return list(dict.fromkeys(attns))


def parse_engines(items: list[str]) -> dict[str, str | None]:
    """[NAME=]PATH entries -> {name: path}; none -> this interpreter as 'default'."""
    if not items:
        return {"default": None}
    out: dict[str, str | None] = {}
    for i, item in enumerate(items):
        name, sep, path = item.partition("=")
        if not sep:
            name, path = ("default" if len(items) == 1 else f"engine{i + 1}"), item
        if not name or not path or name in out:
            raise UsageError(f"--engine: {item!r} must be NAME=PATH with a unique NAME")
        out[name] = path
    return out


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="evalharness", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    g = sub.add_parser("gsm8k", help="GSM8K through continuous batching per graph mode, with padded-eager twins")
    g.add_argument("--model", help="local folder, hub id, or embedded GGUF model: smollm2-135m (default), "
                                   "qwen2.5-coder-0.5b, gemma3-270m")
    g.add_argument("--gguf-file", help="GGUF file inside --model's folder")
    g.add_argument("--data", help="hub dataset id (default openai/gsm8k, config main, split test) or a local "
                                  "JSONL/parquet file with question/answer fields")
    g.add_argument("--fewshot-data", help="local file the few-shot examples come from (default: train.jsonl next to "
                                          "--data)")
    g.add_argument("--limit", type=_positive_int("--limit"), help="first N test rows (default: all)")
    g.add_argument("--graphs", default="off,on,varlen,decode", help="modes: off,on,varlen,decode")
    g.add_argument("--max-bt", default="384", help="max_batch_tokens: 384, a list 128,256 or a range 128:1024:128")
    g.add_argument("--prompt", default="fewshot", choices=["fewshot", "cot", "chat"])
    g.add_argument("--task", help="an lm-eval generate_until task instead of --prompt: one of ours "
                                  "(evalharness_gsm8k, _cot, _chat, _platinum; gsm8k is evalharness_gsm8k), one "
                                  "in an --include-path folder, or any lm-eval task name")
    g.add_argument("--include-path", action="append", default=[], metavar="DIR",
                   help="a folder of lm-eval task YAMLs searched for --task (repeatable), as lm_eval --include_path")
    g.add_argument("--fewshot", type=int, help="number of shots (default 5 for fewshot, 8 for cot)")
    g.add_argument("--max-new-tokens", type=_positive_int("--max-new-tokens"), default=256)
    g.add_argument("--attn", default="sdpa", help="attention backend(s), comma-separated (an axis): sdpa, eager, "
                                                  "torch-flash, flash_attention_2, flash_attention_3")
    g.add_argument("--async", dest="use_async", help="async batching axis: on, off or on,off (default: engine's "
                                                     "choice)")
    g.add_argument("--compile", help="default_compile_level axis, e.g. 0,1,2 (default: engine's choice)")
    g.add_argument("--decode-fast-path", help="decode fast path axis (max_blocks_per_request): on, off or on,off")
    g.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32", "auto"])
    g.add_argument("--out", type=Path, help="report folder (default reports/<timestamp>-gsm8k/)")
    g.add_argument("--inject", action="append", default=[], metavar="MODE=FAULT",
                   help=f"inject a fault into one mode's worker: {', '.join(FAULTS)}")
    g.add_argument("--alpha", type=float, default=0.05, help="McNemar significance level for ACCURACY_DROP")
    g.add_argument("--min-drop", type=float, default=0.02, help="smallest accuracy drop vs off that counts")
    g.add_argument("--filter", help="lm-eval filter that decides `correct` (default strict-match; flexible-extract "
                                    "for chat)")
    g.add_argument("--timeout-s", type=float, help="per-run timeout (default sized from the workload)")
    g.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)")
    g.add_argument("--jobs", type=_positive_int("--jobs"), help="engine runs at a time, each its own worker process "
                                                              "(default 1, or one per --devices entry)")
    g.add_argument("--devices", help="GPUs for the workers, e.g. 0,1,2,3 (one worker per device unless --jobs is "
                                     "larger, then shared round robin)")
    g.add_argument("--cache", type=Path, help="engine-run cache folder (default OUT/runs); runs already there with the "
                                              "same hash are reused, so invocations can share it")
    g.add_argument("--audit", action="store_true", help="re-run every CUDA-graph replay eagerly and name the graph key "
                                                        "and launch constant of the first mismatch")
    g.add_argument("--audit-all", action="store_true", help="like --audit, keeping every mismatching replay")
    g.add_argument("--engine", action="append", default=[], metavar="[NAME=]PATH",
                   help="run the workers under a transformers build: a python interpreter, a venv, or a folder "
                        "holding the package (pip install --target DIR transformers==5.5.4); repeat to compare "
                        "engines side by side")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--history", type=Path, metavar="FILE", help="append one line per cell to this JSONL history and "
                   "report drift vs the last passing run on the same model/task/device (drift exits 1)")
    h = sub.add_parser("history", help="trend per graph mode from a history file (see gsm8k --history)")
    h.add_argument("file", type=Path, help="history JSONL file (or a folder holding history.jsonl)")
    h.add_argument("--plot", type=Path, metavar="PNG", help="also plot accuracy per run and mode (matplotlib)")
    h.add_argument("--model", help="only this model")
    h.add_argument("--device", help="only this device")
    c = sub.add_parser("compare", help="paired comparison of two sample logs (lm-eval --log_samples or our "
                                       "samples.jsonl): McNemar exact test, bootstrap CI, flipped samples")
    c.add_argument("a", type=Path, help="reference samples file (A)")
    c.add_argument("b", type=Path, help="samples file compared with it (B)")
    c.add_argument("--filter", help="lm-eval filter (default strict-match if present)")
    c.add_argument("--metric", default="exact_match", help="lm-eval per-sample metric (1 = correct)")
    c.add_argument("--mode", default="off", help="samples.jsonl: graph mode to compare (default off)")
    c.add_argument("--max-bt", type=int, help="samples.jsonl: max_bt, when the file holds a sweep")
    c.add_argument("--json", action="store_true", help="print the comparison as JSON")
    from .store import add_parsers

    add_parsers(sub, g)  # plan (gsm8k's options), run-job, merge
    g.add_argument("--resume", type=Path, metavar="DIR", help="finish the run in DIR with its saved settings "
                   "(DIR/settings.json): jobs with a result are kept, only the missing ones run; only --jobs, "
                   "--devices and --no-progress may be added")
    return p


def cmd_compare(args, argv) -> int:
    import json

    from . import compare

    logs = [compare.load(f, args.filter, args.metric, args.mode, args.max_bt) for f in (args.a, args.b)]
    result = compare.compare(*logs)
    print(json.dumps(result.to_json(), indent=2) if args.json else compare.render(result))
    return 0


def cmd_gsm8k(args, argv) -> int:
    from .pipeline import Settings, evaluate

    if not 0 < args.alpha < 1:
        raise UsageError("--alpha must be between 0 and 1")
    s = Settings(model=args.model, gguf_file=args.gguf_file, data=args.data, fewshot_data=args.fewshot_data,
                 limit=args.limit, modes=parse_modes(args.graphs), max_bts=parse_max_bt(args.max_bt),
                 prompt=args.prompt, fewshot=args.fewshot, max_new_tokens=args.max_new_tokens,
                 attn=parse_attns(args.attn)[0],
                 dtype=args.dtype, out=args.out, inject=args.inject, alpha=args.alpha, min_drop=args.min_drop,
                 filter=args.filter, timeout_s=args.timeout_s, trust_remote_code=args.trust_remote_code,
                 engines=parse_engines(args.engine), attns=parse_attns(args.attn),
                 asyncs=parse_switch(args.use_async, "--async"), compiles=parse_compile(args.compile),
                 fast_paths=parse_switch(args.decode_fast_path, "--decode-fast-path"), cache=args.cache,
                 jobs=args.jobs or 0, audit="all" if args.audit_all else ("first" if args.audit else None),
                 devices=parse_devices(args.devices),
                 task=args.task, include_path=[str(Path(p).resolve()) for p in args.include_path],
                 progress=not args.no_progress, command="evalharness " + shlex.join(argv))
    if getattr(args, "resume", None) is not None:
        from .store import resume_settings

        s = resume_settings(args)
    if args.command == "plan":
        from .store import write_plan

        return write_plan(s, args)
    ev = evaluate(s)
    grouped = len({(o.engine, o.axes) for o in ev.outcomes}) > 1
    for o in ev.outcomes:
        group = f"[{o.engine} {o.axes}] " if grouped else ""
        print(f"{group}max_bt={o.max_bt:<5} {o.mode:<7} {o.verdict:<13} acc={o.accuracy:.3f} "
              f"twin_mismatches={o.twin_mismatches if o.twin_mismatches is not None else '-'} "
              f"failed={o.failed_requests}  {o.reason}")
    print(f"report: {ev.out / 'report.md'}")
    if args.history:
        from .history import record

        drifts = record(ev, args.history)[1]
        print("\n".join(d.describe() for d in drifts) or f"history: {args.history}: first baseline")
        return max(ev.exit_code, 1 if any(d.significant for d in drifts) else 0)
    return ev.exit_code


def cmd_history(args, argv) -> int:
    from . import history

    lines = history.load(args.file)
    if not lines:
        raise UsageError(f"history: no runs recorded in {history.resolve_path(args.file)}")
    print(history.render_trend(lines, model=args.model, device=args.device))
    if args.plot:
        print(f"plot: {history.plot_trend(lines, args.plot, model=args.model, device=args.device)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        if args.command in ("plan", "run-job", "merge"):
            from .store import COMMANDS

            return COMMANDS[args.command](args, argv)
        return {"gsm8k": cmd_gsm8k, "compare": cmd_compare, "history": cmd_history}[args.command](args, argv)
    except UsageError as e:
        print(f"evalharness: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("evalharness: interrupted; finished runs are kept in the output folder (evalharness gsm8k --resume "
              "OUT finishes the run)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
