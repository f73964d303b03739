"""Twin comparison: first differing token and per-sample matching."""

from __future__ import annotations

import pytest

from evalharness.twin import compare_twin, first_difference
from evalharness.results import RunResult, Sample


@pytest.mark.parametrize("a,b,expected", [
    ([], [], None),
    ([1, 2, 3], [1, 2, 3], None),
    ([1, 2, 3], [1, 9, 3], 1),
    ([5], [6], 0),
    ([1, 2], [1, 2, 3], 2),       # a prefix of b: differs where a ends
    ([1, 2, 3, 4], [1, 2], 2),    # b prefix of a
    ([], [7], 0),                 # empty vs non-empty
    ([7], [], 0),
    ([1, 2, 3], [1, 2, 4, 5], 2),  # a difference before the end of the shorter one wins
])
def test_first_difference(a, b, expected):
    assert first_difference(a, b) == expected
    assert first_difference(b, a) == expected


def _run(key, rows):
    return RunResult(key=key, status="ok", samples=[Sample(index=i, status=st, token_ids=toks, text=str(toks))
                                                    for i, (st, toks) in enumerate(rows)])


def test_compare_twin_counts_only_samples_ok_in_both():
    run = _run("r", [("ok", [1, 2]), ("ok", [1, 2, 3]), ("failed", [1]), ("ok", [4]), ("ok", [])])
    twin = _run("t", [("ok", [1, 2]), ("ok", [1, 5, 3]), ("ok", [1]), ("missing", []), ("ok", [])])
    cmp = compare_twin(run, twin)
    assert cmp.compared == 3  # samples 0, 1, 4
    assert cmp.count == 1
    m = cmp.mismatches[0]
    assert (m.index, m.position, m.run_tokens, m.twin_tokens) == (1, 1, [1, 2, 3], [1, 5, 3])


def test_compare_twin_prefix_is_a_mismatch():
    cmp = compare_twin(_run("r", [("ok", [1, 2])]), _run("t", [("ok", [1, 2, 3])]))
    assert cmp.count == 1 and cmp.mismatches[0].position == 2


def test_compare_twin_identical_and_empty():
    rows = [("ok", [3, 4, 5]), ("ok", [6])]
    cmp = compare_twin(_run("r", rows), _run("t", rows))
    assert (cmp.compared, cmp.count) == (2, 0)
    empty = compare_twin(_run("r", []), _run("t", []))
    assert (empty.compared, empty.count) == (0, 0)


def test_compare_twin_missing_from_twin():
    run = _run("r", [("ok", [1]), ("ok", [2])])
    twin = RunResult(key="t", status="crash", samples=[Sample(index=0, status="ok", token_ids=[1])])
    cmp = compare_twin(run, twin)
    assert (cmp.compared, cmp.count) == (1, 0)
