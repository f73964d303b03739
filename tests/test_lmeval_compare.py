"""`evalharness compare`: paired McNemar / bootstrap / flips over lm-eval --log_samples files and samples.jsonl."""

from __future__ import annotations

import json
import math

import pytest

from evalharness import compare
from evalharness.cli import main
from evalharness.config import UsageError


def exact_mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from first principles: 2 * P(X <= min(b, c)), X ~ Binomial(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def lmeval_rows(correct: list[bool], filters=("strict-match", "flexible-extract")) -> list[dict]:
    rows = []
    for f in filters:
        for i, ok in enumerate(correct):
            rows.append({"doc_id": i, "doc": {"question": f"q{i}"}, "target": "1", "filter": f,
                         "filtered_resps": ["1" if ok else "2"], "resps": [["x"]], "metrics": ["exact_match"],
                         "exact_match": 1.0 if ok else 0.0, "doc_hash": f"h{i}"})
    return rows


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pattern(both, only_a, only_b, neither):
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return a, b


@pytest.mark.parametrize("counts", [(10, 7, 1, 12), (5, 0, 0, 5), (3, 9, 2, 6), (0, 1, 0, 0), (20, 4, 4, 2)])
def test_lmeval_logs_exact_mcnemar(tmp_path, counts):
    a, b = pattern(*counts)
    fa = write(tmp_path / "samples_a.jsonl", lmeval_rows(a))
    fb = write(tmp_path / "samples_b.jsonl", lmeval_rows(b))
    c = compare.compare(compare.load(fa), compare.load(fb))
    both, only_a, only_b, neither = counts
    assert (c.n, c.both, c.only_a, c.only_b, c.neither) == (len(a), both, only_a, only_b, neither)
    assert c.p_value == pytest.approx(exact_mcnemar(only_a, only_b), rel=1e-12)
    assert c.delta == pytest.approx((only_b - only_a) / len(a))
    assert [f.key for f in c.flips] == [i for i in range(len(a)) if a[i] != b[i]]
    if c.delta_ci:
        assert c.delta_ci[0] <= c.delta <= c.delta_ci[1]


def test_known_value():
    # 7 lost, 1 gained: p = 2 * (1 + 8) / 256
    assert exact_mcnemar(7, 1) == pytest.approx(18 / 256)


def test_filter_selection_and_flip_answers(tmp_path):
    a = lmeval_rows([True, True, False])
    b = lmeval_rows([True, False, False])
    for r in b:  # flexible-extract of B agrees with A everywhere
        if r["filter"] == "flexible-extract":
            r.update(exact_match=1.0 if r["doc_id"] < 2 else 0.0)
    fa, fb = write(tmp_path / "a.jsonl", a), write(tmp_path / "b.jsonl", b)
    strict = compare.compare(compare.load(fa), compare.load(fb))
    assert [(f.key, f.a_answer, f.b_answer) for f in strict.flips] == [(1, "1", "2")]
    flex = compare.compare(compare.load(fa, "flexible-extract"), compare.load(fb, "flexible-extract"))
    assert flex.flips == [] and flex.p_value == 1.0


def harness_rows(mode_correct: dict[str, list[bool]]) -> list[dict]:
    rows = []
    for mode, correct in mode_correct.items():
        for twin in ((False, True) if mode != "off" else (False,)):
            for i, ok in enumerate(correct):
                rows.append({"mode": mode, "max_bt": 384, "twin": twin, "run": "r", "index": i, "status": "ok",
                             "text": "t", "answer": str(int(ok)), "correct": ok if not twin else not ok})
    return rows


def test_harness_samples_by_mode(tmp_path):
    a, b = pattern(6, 5, 1, 3)
    f1 = write(tmp_path / "one.jsonl", harness_rows({"off": a, "on": b}))
    f2 = write(tmp_path / "two.jsonl", harness_rows({"off": b}))
    c = compare.compare(compare.load(f1, mode="off"), compare.load(f2, mode="off"))
    assert (c.only_a, c.only_b) == (5, 1)
    assert c.p_value == pytest.approx(exact_mcnemar(5, 1))
    # twins are never read: mode `on` of file one is exactly b
    same = compare.compare(compare.load(f1, mode="on"), compare.load(f2, mode="off"))
    assert same.flips == []


def test_cli_output_and_json(tmp_path, capsys):
    a, b = pattern(4, 3, 0, 1)
    fa = write(tmp_path / "a.jsonl", lmeval_rows(a))
    fb = write(tmp_path / "b.jsonl", lmeval_rows(b))
    assert main(["compare", str(fa), str(fb)]) == 0
    out = capsys.readouterr().out
    assert "McNemar exact p = 0.25" in out and "flipped: 3" in out and "right -> wrong" in out
    assert main(["compare", str(fa), str(fb), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["only_a"] == 3 and data["p_value"] == pytest.approx(0.25)


@pytest.mark.parametrize("content, args, needle", [
    (None, [], "no such file"),
    ("", [], "no rows"),
    ("{not json\n", [], "line 1: not valid JSON"),
    ('{"x": 1}\n', [], "neither an lm-eval"),
    ("LMEVAL", ["--filter", "nope"], "filter 'nope' not among"),
    ("LMEVAL", ["--metric", "acc"], "no metric 'acc'"),
    ("HARNESS", ["--mode", "decode"], "mode 'decode' not among"),
])
def test_bad_inputs_exit_2(tmp_path, capsys, content, args, needle):
    good = write(tmp_path / "good.jsonl", lmeval_rows([True, False]))
    bad = tmp_path / "bad.jsonl"
    if content == "LMEVAL":
        write(bad, lmeval_rows([True, False]))
    elif content == "HARNESS":
        write(bad, harness_rows({"off": [True, False]}))
        good = bad
    elif content is not None:
        bad.write_text(content)
    assert main(["compare", str(good), str(bad), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_different_documents_are_not_paired(tmp_path):
    rows = lmeval_rows([True, False])
    other = lmeval_rows([True, False])
    other[1]["doc_hash"] = "changed"
    fa, fb = write(tmp_path / "a.jsonl", rows), write(tmp_path / "b.jsonl", other)
    with pytest.raises(UsageError, match="different document"):
        compare.compare(compare.load(fa), compare.load(fb))


def test_changed_outputs_beside_flips(tmp_path, capsys):
    """3 of 3 outputs changed and none flipped correctness: compare says so, in text and in --json."""
    rows_a = harness_rows({"off": [True, False, False]})
    rows_b = harness_rows({"off": [True, False, False]})
    for r in rows_a:
        r["token_ids"], r["text"] = [5, 6, 7], "The answer is 4"
    for r, tokens in zip(rows_b, ([5, 6, 8], [5, 9, 7], [5, 6, 7, 1])):
        r["token_ids"], r["text"] = tokens, "The answer is 4!"
    fa, fb = write(tmp_path / "a.jsonl", rows_a), write(tmp_path / "b.jsonl", rows_b)
    c = compare.compare(compare.load(fa), compare.load(fb))
    assert c.flips == [] and c.p_value == 1.0
    assert [(ch.key, ch.unit, ch.position, ch.a_piece, ch.b_piece) for ch in c.changed_outputs] == \
        [(0, "token", 2, "7", "8"), (1, "token", 1, "6", "9"), (2, "token", 3, "(end)", "1")]
    assert main(["compare", str(fa), str(fb)]) == 0
    out = capsys.readouterr().out
    assert "flipped: 0" in out and "changed outputs: 3 of 3" in out
    assert "0: first differing token 2: A='7' B='8' (still right)" in out
    assert main(["compare", str(fa), str(fb), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["changed_outputs"]) == 3 and data["changed_outputs"][1]["position"] == 1


def test_lmeval_raw_responses_compared_by_character(tmp_path):
    a, b = lmeval_rows([True, True]), lmeval_rows([True, True])
    for r in b:
        if r["doc_id"] == 1:
            r["resps"] = [["xy"]]
    c = compare.compare(compare.load(write(tmp_path / "a.jsonl", a)), compare.load(write(tmp_path / "b.jsonl", b)))
    assert [(ch.key, ch.unit, ch.position, ch.a_piece, ch.b_piece) for ch in c.changed_outputs] == \
        [(1, "char", 1, "(end)", "y")]


def test_different_filters_are_not_paired_silently(tmp_path):
    a = lmeval_rows([True, False])
    b = lmeval_rows([True, False], filters=("flexible-extract",))  # no strict-match: its default is flexible
    fa, fb = write(tmp_path / "a.jsonl", a), write(tmp_path / "b.jsonl", b)
    with pytest.raises(UsageError, match="filter 'strict-match' and .* by 'flexible-extract'"):
        compare.compare(compare.load(fa), compare.load(fb))
    same = compare.compare(compare.load(fa, "flexible-extract"), compare.load(fb, "flexible-extract"))
    assert same.n == 2
    # our samples.jsonl: the filter comes from summary.json next to it
    (tmp_path / "run").mkdir()
    ours = write(tmp_path / "run" / "samples.jsonl", harness_rows({"off": [True, False]}))
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"filter": "flexible-extract"}))
    with pytest.raises(UsageError, match="different filters|by filter"):
        compare.compare(compare.load(fa), compare.load(ours))
    assert compare.compare(compare.load(fb), compare.load(ours)).n == 2
