from __future__ import annotations

import pytest

from agent.model import Metric, Result, Status, worst


def test_status_values_are_the_nagios_exit_codes():
    assert [int(s) for s in (Status.OK, Status.WARN, Status.CRIT, Status.UNKNOWN)] == [0, 1, 2, 3]


def test_worst_ranks_crit_over_unknown_over_warn_over_ok():
    assert worst([Status.OK, Status.WARN]) is Status.WARN
    assert worst([Status.WARN, Status.UNKNOWN, Status.OK]) is Status.UNKNOWN
    assert worst([Status.UNKNOWN, Status.CRIT, Status.WARN]) is Status.CRIT
    assert worst([]) is Status.OK


@pytest.mark.parametrize("kw, problem", [
    ({"uom": "kg"}, "unit"),
    ({"name": "bad name"}, "letters"),
    ({"value": float("nan")}, "finite"),
])
def test_metric_rejects_what_perfdata_cannot_carry(kw, problem):
    args = {"name": "used", "value": 1.0, **kw}
    with pytest.raises(ValueError, match=problem):
        Metric(**args)


def test_result_summary_must_be_one_line_and_status_a_status():
    with pytest.raises(ValueError, match="one line"):
        Result("x", Status.OK, "two\nlines")
    with pytest.raises(TypeError):
        Result("x", 0, "int is not a Status")  # type: ignore[arg-type]
