"""One accuracy cell's outcome as the pytest plugin reports it: the failure message (verdict and evidence) and the
item's properties (JUnit XML).

With `--junitxml`, each item's verdict and evidence are testsuite-level properties named `<item nodeid>::<key>` under
the default junit_family xunit2 (whose schema has no per-testcase properties, so xunit2 readers drop those), and
testcase properties under xunit1/legacy.
"""

from __future__ import annotations

from pathlib import Path


def _snippet(text: str, char: int, width: int = 60) -> str:
    lo = max(0, char - width)
    return ("…" if lo else "") + text[lo:char + width]


def failure_message(o, report_dir: Path | None = None) -> str:
    lines = [f"{o.verdict}: mode {o.mode} at max_bt={o.max_bt} ({o.axes or 'default axes'}): {o.reason}"]
    ci = o.accuracy_ci
    finished = o.n if o.finished is None else o.finished
    acc = ("accuracy n/a (no sample finished)" if o.accuracy is None else
           f"accuracy {o.accuracy:.3f} ({o.correct}/{finished}" + (f" finished of {o.n}" if finished != o.n else "")
           + (f", 95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ")"))
    if o.delta_vs_off is not None:
        acc += f"; delta vs off {o.delta_vs_off:+.3f}, McNemar p={o.p_value:.3g}"
    lines.append("  " + acc)
    if o.twin_mismatches is not None:
        lines.append(f"  twin mismatches: {o.twin_mismatches}/{o.twin_compared} samples differ from the padded-eager "
                     "twin")
    if o.failed_requests or o.twin_failed_requests:
        lines.append(f"  failed requests: run {o.failed_requests}, twin {o.twin_failed_requests}")
    if o.comparison and o.comparison.mismatches:
        m = o.comparison.mismatches[0]
        char = next((j for j, (x, y) in enumerate(zip(m.run_text, m.twin_text)) if x != y),
                    min(len(m.run_text), len(m.twin_text)))
        lines.append(f"  first mismatching sample {m.index} at token {m.position}: graph run token "
                     f"{m.run_tokens[m.position:m.position + 1]} vs twin {m.twin_tokens[m.position:m.position + 1]}")
        lines.append(f"    graph run: {_snippet(m.run_text, char)!r}")
        lines.append(f"    twin:      {_snippet(m.twin_text, char)!r}")
    if getattr(o, "confirmation", None) is not None:
        lines.append(f"  confirmation: {o.confirmation.describe()}")
    if getattr(o, "stale_constants", None):
        from .audit import describe_constants

        lines.append(f"  {describe_constants(o.stale_constants)}")
    if report_dir is not None:
        lines.append(f"  report: {report_dir / 'report.md'} ({report_dir / 'report.html'})")
    return "\n".join(lines)


def record_outcome(item, o, report_dir: Path | None) -> None:
    props = {"verdict": str(o.verdict), "reason": o.reason, "cell": o.cell_id, "accuracy": None if o.accuracy is None else f"{o.accuracy:.4f}", "finished": o.finished,
             "n": o.n, "correct": o.correct, "twin_mismatches": o.twin_mismatches, "twin_compared": o.twin_compared,
             "p_value": None if o.p_value is None else f"{o.p_value:.4g}",
             "delta_vs_off": None if o.delta_vs_off is None else f"{o.delta_vs_off:+.4f}",
             "failed_requests": o.failed_requests}
    if o.comparison and o.comparison.mismatches:
        m = o.comparison.mismatches[0]
        props["first_mismatch"] = f"sample {m.index} token {m.position}"
    if getattr(o, "confirmation", None) is not None:
        props["confirmation"] = o.confirmation.status
    if getattr(o, "stale_constants", None):
        props["stale_constants"] = o.stale_constants.get("total")
    if report_dir is not None:
        props["report"] = str(report_dir / "report.html")
    add_properties(item, props)


def add_properties(item, props: dict) -> None:
    """Testsuite-level properties `<nodeid>::<key>` under xunit2 (the default junit_family, whose testcases carry no
    properties), testcase properties otherwise (xunit1/legacy, or no --junitxml: other reporters read them)."""
    from _pytest.junitxml import xml_key

    xml = item.config.stash.get(xml_key, None)
    for key, value in props.items():
        if value is None:
            continue
        if xml is not None and xml.family not in ("xunit1", "legacy"):
            xml.add_global_property(f"{item.nodeid}::{key}", value)
        else:
            item.user_properties.append((key, value))
