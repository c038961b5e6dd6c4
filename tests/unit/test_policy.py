"""The supervisor's state machine, pass by pass, with real Results and real time values."""

from __future__ import annotations

import json

import pytest

from agent.config import RestartOptions
from agent.memory import Maintenance, Memory
from agent.model import Result, Status
from agent.policy import Policy, Restart

OK, WARN, CRIT = Status.OK, Status.WARN, Status.CRIT
NONE = Maintenance()


def svc(status, unit="postfix", summary=None):
    return Result(f"service:{unit}", status, summary or status.name.lower(), unit=unit)


def probe(status, unit="postfix"):
    return Result("port:localhost:25", status, "probe", unit=unit,
                  depends_on=(f"service:{unit}",))


def policy(tolerance=(1, 1), memory=None, **restart):
    opts = RestartOptions(**{"budget": 3, "backoff": 10, "grace": 5, "window": 900, **restart})
    return Policy(memory or Memory(), opts, lambda cid: tolerance)


def kinds(alerts):
    return [(a.kind, a.check, a.status.name) for a in alerts]


def test_a_failure_alerts_once_restarts_and_a_recovery_is_announced():
    p = policy()
    alerts, restarts = p.evaluate([svc(CRIT)], 1000, NONE)
    assert kinds(alerts) == [("problem", "service:postfix", "CRIT")]
    assert restarts == [Restart("postfix", "service:postfix", "crit")]
    assert kinds(p.restarted(restarts[0], 1000, "", "systemctl restart postfix.service")) == [
        ("restart", "service:postfix", "CRIT")]
    alerts, restarts = p.evaluate([svc(CRIT)], 1002, NONE)
    assert alerts == [] and restarts == [], "no second alert, no restart within grace"
    alerts, restarts = p.evaluate([svc(OK)], 1006, NONE)
    assert kinds(alerts) == [("recovery", "service:postfix", "OK")]
    assert p.memory.checks["service:postfix"].since == 1006


def test_tolerance_acts_only_after_n_failures_within_m_runs():
    p = policy(tolerance=(2, 3))
    assert p.evaluate([svc(CRIT)], 1, NONE) == ([], [])
    assert p.evaluate([svc(OK)], 2, NONE) == ([], [])
    alerts, restarts = p.evaluate([svc(CRIT)], 3, NONE)  # 2 failures in the last 3 runs
    assert kinds(alerts) == [("problem", "service:postfix", "CRIT")] and len(restarts) == 1


def test_budget_then_backoff_then_escalation_and_no_more_restarts():
    p = policy(budget=3, backoff=10, grace=5)
    t, done = 0.0, []
    while t < 200:
        alerts, restarts = p.evaluate([svc(CRIT)], t, NONE)
        for rs in restarts:
            done.append(t)
            alerts += p.restarted(rs, t, "", "restart")
        if any(a.kind == "escalation" for a in alerts):
            escalated_at = t
            break
        t += 1
    assert done == [0, 10, 30], "backoff doubles: 10 s, then 20 s"
    assert escalated_at == 35, "escalates once the last restart's grace has passed"
    assert p.memory.units["postfix"].escalated == "3 restarts within 15 min did not help"
    for t in range(36, 1000, 7):
        assert p.evaluate([svc(CRIT)], t, NONE)[1] == []


def test_recovery_clears_the_escalation_and_reset_clears_the_budget():
    p = policy(budget=1, grace=0, backoff=0)
    _, [rs] = p.evaluate([svc(CRIT)], 0, NONE)
    p.restarted(rs, 0, "", "restart")
    alerts, _ = p.evaluate([svc(CRIT)], 1, NONE)
    assert kinds(alerts) == [("escalation", "service:postfix", "CRIT")]
    p.evaluate([svc(OK)], 2, NONE)
    assert p.memory.units["postfix"].escalated == ""
    assert p.reset("postfix") and "postfix" not in p.memory.units
    assert p.reset("postfix") is False


def test_a_restart_command_that_fails_escalates_at_once():
    p = policy()
    _, [rs] = p.evaluate([svc(CRIT)], 0, NONE)
    alerts = p.restarted(rs, 0, "Unit postfix.service is masked.", "systemctl restart")
    assert kinds(alerts) == [("escalation", "service:postfix", "CRIT")]
    assert "masked" in alerts[0].summary
    assert p.evaluate([svc(CRIT)], 100, NONE)[1] == []


def test_a_probe_failing_while_its_unit_runs_restarts_the_unit():
    p = policy()
    alerts, restarts = p.evaluate([svc(OK), probe(CRIT)], 0, NONE)
    assert kinds(alerts) == [("problem", "port:localhost:25", "CRIT")]
    assert restarts == [Restart("postfix", "port:localhost:25", "probe")]


def test_a_probe_whose_service_is_down_is_inhibited_no_second_alert_no_second_restart():
    p = policy()
    alerts, restarts = p.evaluate([svc(CRIT), probe(CRIT)], 0, NONE)
    assert kinds(alerts) == [("problem", "service:postfix", "CRIT")]
    assert [r.check for r in restarts] == ["service:postfix"]
    assert p.memory.checks["port:localhost:25"].inhibited_by == "service:postfix"
    alerts, _ = p.evaluate([svc(OK), probe(OK)], 10, NONE)
    assert kinds(alerts) == [("recovery", "service:postfix", "OK")], "no recovery for a " \
        "probe the administrator never heard about"


def test_warn_such_as_systemd_auto_restart_is_left_to_systemd():
    p = policy()
    alerts, restarts = p.evaluate([svc(WARN, summary="systemd is restarting it")], 0, NONE)
    assert kinds(alerts) == [("problem", "service:postfix", "WARN")] and restarts == []


@pytest.mark.parametrize("maintenance", [Maintenance(until=100),
                                         Maintenance(units={"postfix": 100})])
def test_maintenance_suppresses_actions_and_alerts_then_what_is_still_wrong_is_said(
        maintenance):
    p = policy()
    assert p.evaluate([svc(CRIT)], 10, maintenance) == ([], [])
    alerts, restarts = p.evaluate([svc(CRIT)], 101, maintenance)
    assert kinds(alerts) == [("problem", "service:postfix", "CRIT")] and len(restarts) == 1


def test_maintenance_of_one_unit_leaves_the_others_watched():
    p = policy()
    alerts, restarts = p.evaluate([svc(CRIT, "dovecot")], 10, Maintenance(units={"postfix": 99}))
    assert [r.unit for r in restarts] == ["dovecot"] and len(alerts) == 1


def test_memory_survives_a_round_trip_and_so_neither_budget_nor_alerts_are_forgotten():
    p = policy()
    _, [rs] = p.evaluate([svc(CRIT)], 0, NONE)
    p.restarted(rs, 0, "", "restart")
    again = policy(memory=Memory.from_dict(p.memory.to_dict()))
    assert again.evaluate([svc(CRIT)], 20, NONE)[0] == [], "already alerted before the restart"
    assert again.memory.units["postfix"].restarts == [0]


def test_essence_ignores_changing_summaries_only():
    m = Memory()
    p = policy(memory=m)
    p.evaluate([svc(OK, summary="a")], 0, NONE)
    before = m.essence()
    p.evaluate([svc(OK, summary="b")], 1, NONE)
    assert m.essence() == before
    p.evaluate([svc(CRIT)], 2, NONE)
    assert m.essence() != before


def test_a_probe_failure_a_restart_cannot_cure_is_alerted_but_not_restarted():
    p = policy()
    cert = Result("smtp:localhost:25", CRIT, "certificate expires in 3 days", unit="postfix",
                  depends_on=("service:postfix",), restartable=False)
    alerts, restarts = p.evaluate([svc(OK), cert], 0, NONE)
    assert kinds(alerts) == [("problem", "smtp:localhost:25", "CRIT")]
    assert restarts == []


def test_a_unit_that_came_back_and_fails_again_is_restarted_at_once_while_the_budget_lasts():
    p = policy(budget=3, backoff=30, grace=20)
    done = []
    for t in (0, 10, 20):  # killed, back within a second, killed again 10 s later
        _, restarts = p.evaluate([svc(CRIT)], t, NONE)
        assert [r.unit for r in restarts] == ["postfix"], f"no restart at {t}"
        p.restarted(restarts[0], t, "", "restart")
        done.append(t)
        p.evaluate([svc(OK)], t + 1, NONE)  # too soon after the restart to count as held
        assert p.memory.units["postfix"].streak == 1
        p.evaluate([svc(OK)], t + 3, NONE)  # settled: the restart held
        assert p.memory.units["postfix"].streak == 0
    assert done == [0, 10, 20]
    assert p.evaluate([svc(CRIT)], 30, NONE)[1] == [], "budget of 3 spent"
    alerts, restarts = p.evaluate([svc(CRIT)], 41, NONE)
    assert restarts == [] and kinds(alerts) == [("escalation", "service:postfix", "CRIT")]


def test_a_restart_that_did_not_hold_backs_off_even_after_an_earlier_one_held():
    p = policy(budget=5, backoff=30, grace=5)
    _, [rs] = p.evaluate([svc(CRIT)], 0, NONE)
    p.restarted(rs, 0, "", "restart")
    p.evaluate([svc(OK)], 3, NONE)
    _, [rs] = p.evaluate([svc(CRIT)], 10, NONE)  # held: at once
    p.restarted(rs, 10, "", "restart")
    assert p.evaluate([svc(CRIT)], 16, NONE)[1] == [], "never came up: backoff 30 s"
    assert p.evaluate([svc(CRIT)], 39, NONE)[1] == []
    assert len(p.evaluate([svc(CRIT)], 40, NONE)[1]) == 1


def test_an_older_state_file_loads_and_a_foreign_one_starts_afresh(tmp_path):
    from agent.model import Status
    from agent.state import StateDir

    state = StateDir(tmp_path)
    state.ensure()
    old = {"checks": {"service:postfix": {"status": "CRIT", "since": 5.0, "summary": "down",
                                          "unit": "postfix", "runs": [1], "alerted": "CRIT",
                                          "inhibited_by": ""}},
           "units": {"postfix": {"restarts": [1.0], "next_at": 0.0, "escalated": "",
                                 "last_action": "restart", "streak": 1}}}
    (tmp_path / "state.json").write_text(json.dumps(old))
    memory = state.load_memory()
    assert memory.checks["service:postfix"].status is Status.CRIT
    assert memory.checks["service:postfix"].alerted is Status.CRIT and memory.notices == {}
    state.save_memory(memory)
    assert json.loads((tmp_path / "state.json").read_text())["checks"]["service:postfix"][
        "status"] == "CRIT", "names on disk"
    (tmp_path / "state.json").write_text(json.dumps(
        {"checks": {"x": {"status": "BROKEN"}}}))
    assert state.load_memory().checks == {}
