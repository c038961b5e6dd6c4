"""``steward audit`` end to end (the real command line on fixture systems), the score, drift
between audits, and the audit as a check in ``steward check``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from agent.model import Status
from agent.system.commands import CommandRunner
from checks.audit import audit, score, score_result
from checks.audit.base import Context, Finding
from checks.audit.options import AuditOptions
from tests.clocks import DAY, FakeClock
from tests.conftest import run_steward


def _system(root: Path, selinux: str = "enforcing", crypto: str = "DEFAULT") -> Path:
    """An EL9-like tree with just SELinux and crypto-policy settings: no daemons."""
    (root / "etc/selinux").mkdir(parents=True, exist_ok=True)
    (root / "etc/selinux/config").write_text(f"SELINUX={selinux}\nSELINUXTYPE=targeted\n")
    (root / "etc/crypto-policies/state").mkdir(parents=True, exist_ok=True)
    (root / "etc/crypto-policies/state/current").write_text(crypto + "\n")
    return root


def _audit(tmp_path: Path, root: Path, *args: str):
    return run_steward("audit", "--sysroot", str(root), "--state-dir", str(tmp_path / "state"),
                       *args)


def _rules(doc: dict) -> dict[str, str]:
    return {r["check"]: r["status"] for r in doc["results"]}


def test_a_fixture_system_is_audited_with_json_exit_code_and_score(tmp_path):
    root = _system(tmp_path / "root", crypto="LEGACY")
    r = _audit(tmp_path, root, "--format", "json")
    doc = json.loads(r.stdout)
    rules = _rules(doc)
    assert rules["audit:selinux.mode"] == "OK"
    assert rules["audit:system.crypto_policy"] in ("WARN", "CRIT")
    assert r.returncode == max(int(Status[s]) for s in rules.values() if s != "UNKNOWN")
    assert doc["audit"]["sysroot"] == str(root)
    assert 0 < doc["audit"]["score_percent"] < 100 and doc["audit"]["rules"] == len(rules) - 1
    failing = next(x for x in doc["results"] if x["check"] == "audit:system.crypto_policy")
    assert "LEGACY" in failing["summary"] and failing["remedy"]


def test_the_exit_code_is_the_worst_rule_and_rule_filters_select(tmp_path):
    root = _system(tmp_path / "root", selinux="disabled")
    r = _audit(tmp_path, root, "--rule", "selinux.mode")
    assert r.returncode == 2, r.stdout + r.stderr  # SELinux off at boot is CRIT
    assert "audit:selinux.mode" in r.stdout and "remedy:" in r.stdout
    assert "crypto" not in r.stdout and "hardening score" not in r.stdout
    ok = _audit(tmp_path, root, "--rule", "system.crypto*", "--format", "nagios")
    assert ok.returncode == 0 and ok.stdout.startswith("STEWARD OK")


def test_a_rule_newly_failing_since_the_last_audit_is_named(tmp_path):
    root = _system(tmp_path / "root")
    first = json.loads(_audit(tmp_path, root, "--format", "json").stdout)
    assert first["audit"]["newly_failing"] == []
    (root / "etc/selinux/config").write_text("SELINUX=permissive\nSELINUXTYPE=targeted\n")
    second = _audit(tmp_path, root)
    assert "newly failing since the last audit: audit:selinux.mode" in second.stdout
    third = json.loads(_audit(tmp_path, root, "--format", "json").stdout)
    assert third["audit"]["newly_failing"] == []  # still failing, no longer new


def test_the_audit_and_its_score_history_are_dated_by_the_clock(tmp_path, capsys):
    from agent.config import Config
    from agent.env import Env
    from checks.audit import cli

    root = _system(tmp_path / "root")
    clock = FakeClock(1_700_000_000.0)  # 2023-11-14 22:13:20 UTC
    env = Env(Config("<test>"), state_dir=tmp_path / "state", clock=clock)
    args = argparse.Namespace(sysroot=root, rule=[], format="json")

    def audit_now() -> dict:
        cli.run(args, env, AuditOptions())
        return json.loads(capsys.readouterr().out)

    first = audit_now()
    assert first["started"].startswith("2023-11-14T22:13:20")
    assert [h["at"] for h in first["audit"]["history"]] == [1_700_000_000]
    clock.advance(days=1)
    second = audit_now()
    assert second["started"].startswith("2023-11-15T22:13:20")
    assert [h["at"] for h in second["audit"]["history"]] == [1_700_000_000,
                                                             1_700_000_000 + int(DAY)]
    kept = json.loads((tmp_path / "state" / "audit.json").read_text())
    assert kept[str(root)]["at"] == 1_700_000_000 + int(DAY)


@pytest.mark.parametrize(("args", "says"), [
    (["--sysroot", "/nonexistent/x"], "--sysroot /nonexistent/x: not a directory"),
    (["--sysroot", "{tmp}"], "no etc/ folder there"),
    (["--sysroot", "{root}", "--rule", "nosuch.*"], "--rule nosuch.*: matches no rule"),
    (["--format", "yaml"], "invalid choice"),
])
def test_bad_arguments_exit_2_with_a_message(tmp_path, args, says):
    root = _system(tmp_path / "root")
    argv = [a.format(tmp=tmp_path, root=root) for a in args]
    r = run_steward("audit", "--state-dir", str(tmp_path / "state"), *argv)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr


def test_a_family_that_breaks_is_one_unknown_not_a_traceback(tmp_path, monkeypatch):
    # An installed distribution whose steward.audit entry point names a missing module.
    info = tmp_path / "site" / "brokenfamily-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "entry_points.txt").write_text("[steward.audit]\nnosuchfamily = nosuch.module\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    ctx = Context(_system(tmp_path), AuditOptions(), CommandRunner())
    [f] = audit(ctx, only=("nosuchfamily",))
    assert f.ok is None and f.rule == "nosuchfamily.error"
    assert "ModuleNotFoundError" in f.found and f.result().status is Status.UNKNOWN


def test_skipped_rules_are_left_out_and_the_score_weighs_crit_rules_three_times(tmp_path):
    ctx = Context(_system(tmp_path, selinux="disabled"), AuditOptions(skip=("selinux.*",)),
                  CommandRunner())
    assert not any(f.rule.startswith("selinux.") for f in audit(ctx))
    crit = Finding("a.crit", "t", False, "x", "y", "fix", severity=Status.CRIT)
    warn = Finding("a.warn", "t", True, "x", "y", "fix")
    assert score([crit, warn]) == (1, 4)
    assert score_result([crit, warn], 0).summary.startswith("hardening score 25 % (1 of 2")
    assert score_result([crit, warn], 50).status is Status.WARN
    assert score_result([crit, warn], 0).status is Status.OK


def test_the_audit_runs_inside_steward_check_as_one_result_per_rule(tmp_path):
    conf = tmp_path / "steward.toml"
    conf.write_text('[checks.audit]\nskip = ["system.listen*"]\n')
    r = run_steward("check", "--config", str(conf), "--state-dir", str(tmp_path / "state"),
                    "--only", "audit*", "--format", "json")
    doc = json.loads(r.stdout)
    ids = [x["check"] for x in doc["results"]]
    assert "audit" in ids and any(i.startswith("audit:") for i in ids)
    assert not any(i.startswith("audit:system.listen") for i in ids)
    assert r.returncode == doc["exit_code"]


def test_under_the_daemon_the_audit_runs_in_a_child_with_the_same_results(tmp_path):
    """steward run keeps no rule family in its own memory: a child process judges them."""
    import dataclasses

    from agent.config import Config
    from agent.env import Env
    from checks.audit import AuditCheck

    root = _system(tmp_path, selinux="permissive", crypto="LEGACY")
    check = AuditCheck(AuditOptions(skip=("system.listen*",), min_score=90))
    env = Env(Config("<test>"), sysroot=root)
    here = list(check.run(env))
    there = list(check.run(dataclasses.replace(env, keeps_state=True)))
    assert [(r.check, r.status, r.summary, r.remedy, r.metrics) for r in there] == \
        [(r.check, r.status, r.summary, r.remedy, r.metrics) for r in here]
    assert next(r for r in there if r.check == "audit").status is Status.WARN  # below 90 %
    assert any(r.check == "audit:selinux.mode" and r.status is Status.CRIT for r in there)
