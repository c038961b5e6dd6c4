from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.ranges import Range, judge

# (range, value, alerts?) straight from the Nagios plugin guidelines' examples.
TABLE = [
    ("10", 11, True), ("10", 10, False), ("10", -1, True), ("10", 0, False),
    ("10:", 9.9, True), ("10:", 1e9, False),
    ("~:10", 11, True), ("~:10", -1e9, False),
    ("10:20", 9, True), ("10:20", 15, False), ("10:20", 21, True),
    ("@10:20", 15, True), ("@10:20", 10, True), ("@10:20", 21, False),
    ("-5:-1", -3, False), ("-5:-1", 0, True), ("0.5", 0.6, True),
]


@pytest.mark.parametrize("text, value, alerts", TABLE)
def test_range_alerts_as_the_nagios_guidelines_say(text, value, alerts):
    assert Range.parse(text).alerts(value) is alerts


@pytest.mark.parametrize("text", ["", "@", "abc", "20:10", "1:2:3", "inf", "nan", "~", "10:x"])
def test_malformed_ranges_are_refused_with_a_reason(text):
    with pytest.raises(ValueError, match=r"range|number"):
        Range.parse(text)


def test_judge_prefers_critical_over_warning():
    assert judge(96, Range.parse("85"), Range.parse("95")) == 2
    assert judge(90, Range.parse("85"), Range.parse("95")) == 1
    assert judge(10, Range.parse("85"), Range.parse("95")) == 0
    assert judge(10, None, None) == 0


@given(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6), st.floats(-1e7, 1e7))
def test_inside_range_is_the_exact_opposite_of_outside(a, b, v):
    lo, hi = min(a, b), max(a, b)
    outside, inside = Range.parse(f"{lo!r}:{hi!r}"), Range.parse(f"@{lo!r}:{hi!r}")
    assert outside.alerts(v) is not inside.alerts(v)
    assert outside.alerts(v) is not (lo <= v <= hi)
    assert math.isfinite(outside.start)
