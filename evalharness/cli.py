"""`evalharness`: the one entry point. Subcommands: gsm8k (the main job)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from . import __version__, fanout, settings
from .config import UsageError
from .pipeline import evaluate
from .store import resume_settings
from .verdict import EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="evalharness", description=__doc__)
    p.add_argument("--version", action="version", version=f"evalharness {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    g = sub.add_parser("gsm8k", help="GSM8K through continuous batching per graph mode, with padded-eager twins")
    settings.add_arguments(g)  # every option is a field of settings.Settings
    g.add_argument("--resume", type=Path, metavar="DIR", help="finish the run in DIR with its saved settings "
                   "(DIR/settings.json): jobs with a result are kept, only the missing ones run; only "
                   f"{', '.join(settings.resume_flags())} may be added")
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
    sub.add_parser("faults", help="list what --inject can inject: faults, fix candidates, probes")
    fanout.add_parsers(sub)  # plan (gsm8k's options), run-job, merge
    return p


def cmd_compare(args, argv) -> int:
    import json

    from . import compare

    logs = [compare.load(f, args.filter, args.metric, args.mode, args.max_bt) for f in (args.a, args.b)]
    result = compare.compare(*logs)
    print(json.dumps(result.to_json(), indent=2) if args.json else compare.render(result))
    return 0


def cmd_gsm8k(args, argv) -> int:
    """gsm8k and plan: the settings from the command line (or DIR/settings.json with --resume), then run or plan."""
    if getattr(args, "resume", None) is not None:
        s = resume_settings(args)
    else:
        s = settings.from_args(args, command="evalharness " + shlex.join(argv))
    if args.command == "plan":
        return fanout.write_plan(s, args)
    line = None  # what the machine's defaults chose, printed once the settings proved valid
    if getattr(args, "resume", None) is None:
        from .defaults import machine_defaults
        from .execute import detect_cuda
        from .plan import default_out

        s, line = machine_defaults(s, argv, detect_cuda())
        if s.output.folder is None:  # decided here, so that an interrupted run can say where it is
            s = settings.replace(s, out=default_out())
    if s.output.history:
        from .history import ensure_appendable

        ensure_appendable(s.output.history)  # before the run: an unwritable history would lose it at the end
    try:  # the defaults line once the settings proved valid (a usage error stays one line)
        ev = evaluate(s, on_start=(lambda: print(line, flush=True)) if line else None)
    except KeyboardInterrupt:
        out = s.output.folder
        print(f"evalharness: interrupted; finished runs are kept in {out} (evalharness gsm8k --resume {out} "
              "finishes the run)", file=sys.stderr)
        return 130
    grouped = len({(o.engine, o.axes) for o in ev.outcomes}) > 1
    for o in ev.outcomes:
        group = f"[{o.engine} {o.axes}] " if grouped else ""
        print(f"{group}max_bt={o.max_bt:<5} {o.mode:<7} {o.verdict:<16} {o.accuracy_text()} "
              f"twin_mismatches={o.twin_mismatches if o.twin_mismatches is not None else '-'} "
              f"failed={o.failed_requests}  {o.reason}")
    from .report import accuracy_note

    if accuracy_note(ev.summary):
        print(f"note: {accuracy_note(ev.summary)}")
    for cell in ev.summary.cells:
        if cell.worker_log:
            print(f"{cell.id}: worker log {cell.worker_log}")
    print(f"report: {ev.out / 'report.md'}")
    print(f"report: {ev.out / 'report.html'}")
    if ev.summary.history is not None:
        check = ev.summary.history
        print("\n".join(d.describe() for d in check.drifts) or f"history: {check.path}: first baseline")
    return ev.exit_code


def cmd_history(args, argv) -> int:
    from . import history, trend

    lines = history.load(args.file)
    if not lines:
        raise UsageError(f"history: no runs recorded in {history.resolve_path(args.file)}")
    print(trend.render_trend(lines, model=args.model, device=args.device))
    if args.plot:
        print(f"plot: {trend.plot_trend(lines, args.plot, model=args.model, device=args.device)}")
    return 0


def cmd_faults(args, argv) -> int:
    from .faults import listing

    print(listing())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        if args.command in fanout.COMMANDS:
            return fanout.COMMANDS[args.command](args, argv)
        return {"gsm8k": cmd_gsm8k, "plan": cmd_gsm8k, "compare": cmd_compare,
                "history": cmd_history, "faults": cmd_faults}[args.command](args, argv)
    except UsageError as e:
        print(f"evalharness: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("evalharness: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
