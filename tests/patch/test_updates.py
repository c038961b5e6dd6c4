"""The updates check and ``steward patch check``, against the real dnf in the test bed, and
the audit's reading of the pending.json they agree on."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest

from agent.config import Config
from agent.env import Env
from agent.model import Status
from agent.ranges import Range
from agent.system.commands import CommandRunner
from checks.updates import UpdatesCheck, UpdatesOptions
from patch import cli
from patch.dnfparse import Advisory, Update
from patch.pending import Pending
from tests.clocks import FakeClock
from tests.patch.repo import SECURITY_ISSUED, Bed
from tests.schemas import validate

DAY = 86400.0


def check(**kw) -> UpdatesCheck:
    return UpdatesCheck(UpdatesOptions(**kw))


@pytest.mark.root
def test_the_check_counts_security_and_all_and_writes_the_pending_state(bed: Bed, tmp_path):
    state = tmp_path / "state"
    env = Env(Config("<test>"), sysroot=bed.root, state_dir=state, keeps_state=True)
    [r] = check().run(env)
    days = (time.time() - SECURITY_ISSUED) / DAY
    assert r.check == "updates" and r.status is Status.WARN  # older than 14 days
    assert r.summary == f"1 security update pending (2 in all), oldest advisory {days:.0f} days"
    m = {x.name: x for x in r.metrics}
    assert (m["security"].value, m["updates"].value, m["critical"].value) == (1, 2, 0)
    assert m["oldest_security_age"].warn == "1.2096e+06" and m["oldest_security_age"].uom == "s"
    assert "RLSA-2025:0001 Important" in r.details and "CVE-2025-0001" in r.details
    assert "other updates: mailfilter-1.1-1.noarch" in r.details
    assert not r.restartable and "steward patch" in r.remedy
    doc = json.loads((state / "patch/pending.json").read_text())
    assert doc["security"] == 1 and doc["all"] == 2
    assert doc["oldest_security_issued"] == SECURITY_ISSUED
    assert abs(doc["checked"] - time.time()) < 60


@pytest.mark.root
def test_a_manual_check_keeps_no_state_and_a_failing_dnf_is_unknown(bed: Bed, tmp_path):
    env = Env(Config("<test>"), sysroot=bed.root, state_dir=tmp_path / "state")
    [r] = check(age_warn_days=100000).run(env)
    assert r.status is Status.OK and not (tmp_path / "state").exists()
    bed.configure(extra={"gone": (tmp_path / "missing").as_uri()})
    [r] = check().run(env)
    assert r.status is Status.UNKNOWN
    assert r.summary == "dnf failed: repository unreachable: gone"
    assert "dnf repolist" in r.remedy


def test_the_check_is_silent_without_dnf(tmp_path):
    env = Env(Config("<test>"), commands=CommandRunner({"PATH": str(tmp_path)}))
    assert list(check().run(env)) == []


def pending(n_security: int, *, issued: float | None, severity: str = "Important",
            others: int = 1) -> Pending:
    ups = [Update(f"sec{i}", "x86_64", "1-2", "baseos") for i in range(n_security)]
    ups += [Update(f"other{i}", "noarch", "1-2", "appstream") for i in range(others)]
    advs = tuple(Advisory(f"RLSA-{i}", "security", severity, issued,
                          (f"sec{i}-1-2.x86_64",), ("CVE-1",)) for i in range(n_security))
    return Pending(tuple(ups), advs, 0.0)


def test_judging_counts_and_age():
    now = 100 * DAY
    assert check().judge(pending(0, issued=None), now).summary == \
        "0 security updates pending (1 in all)"
    r = check().judge(pending(3, issued=now - 2 * DAY), now)
    assert r.status is Status.OK and r.summary.endswith("oldest advisory 2 days")
    assert check(security_warn=Range.parse("0")).judge(
        pending(1, issued=now), now).status is Status.WARN
    assert check(security_crit=Range.parse("2")).judge(
        pending(3, issued=now), now).status is Status.CRIT
    assert check(age_crit_days=30).judge(
        pending(1, issued=now - 31 * DAY), now).status is Status.CRIT
    r = check().judge(pending(1, issued=now - 15 * DAY, severity="Critical"), now)
    assert r.status is Status.WARN and {m.name: m.value for m in r.metrics}["critical"] == 1


def test_the_audit_reads_what_the_check_writes(tmp_path):
    from checks.audit.base import Context
    from checks.audit.options import AuditOptions
    from checks.audit.system import _security_updates
    from patch.pending import write_state

    write_state(tmp_path / "var/lib/steward", pending(2, issued=1.0e9))
    [finding] = _security_updates(Context(tmp_path, AuditOptions(), CommandRunner()))
    assert finding.ok is False and finding.found.startswith("2 security updates pending")


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    cli.add_parsers(sub, lambda _: None)
    return p.parse_args(["patch", "check", *argv])


@pytest.mark.root
def test_patch_check_text_and_exit_code(bed: Bed, capsys):
    env = Env(Config("<test>"))
    assert cli.run(parse("--installroot", str(bed.root)), env) == cli.PENDING
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("2 updates pending, 1 fixing security advisories; oldest "
                             "security advisory issued 2025-01-15")
    assert out[1].split()[:3] == ["hello-appl.noarch", "1.1-1", "updates"]
    assert "RLSA-2025:0001 (Important, CVE-2025-0001, issued 2025-01-15, reboot suggested)" \
        in out[1]
    assert out[2].split()[:4] == ["mailfilter.noarch", "1.1-1", "updates", "RLBA-2025:0002"]


@pytest.mark.root
def test_patch_check_json_security_only_and_nothing_pending(bed: Bed, capsys):
    from patch.dnf import Dnf

    env = Env(Config("<test>"))
    args = parse("--installroot", str(bed.root), "--security", "--format", "json")
    assert cli.run(args, env) == cli.PENDING
    doc = json.loads(capsys.readouterr().out)
    validate(doc, "patch-check.schema.json")
    assert [u["name"] for u in doc["updates"]] == ["hello-appl"]
    assert doc["updates"][0]["advisories"] == ["RLSA-2025:0001"]
    assert doc["advisories"][0]["cves"] == ["CVE-2025-0001"] and doc["security"] == 1
    assert doc["installroot"] == str(bed.root)
    Dnf(CommandRunner(), bed.root).upgrade()
    assert cli.run(parse("--installroot", str(bed.root)), env) == cli.NOTHING_PENDING
    assert capsys.readouterr().out == "No updates pending.\n"


@pytest.mark.root
def test_patch_check_says_when_dnf_fails(bed: Bed, tmp_path, capsys):
    bed.configure(extra={"gone": (tmp_path / "missing").as_uri()})
    assert cli.run(parse("--installroot", str(bed.root)), Env(Config("<test>"))) == \
        cli.DNF_FAILED
    assert "repository unreachable: gone" in capsys.readouterr().err


def test_patch_check_refuses_a_missing_installroot(tmp_path):
    from agent.errors import UsageError

    with pytest.raises(UsageError, match="not a directory"):
        cli.run(parse("--installroot", str(tmp_path / "nope")), Env(Config("<test>")))


def test_patch_check_without_dnf_is_dnf_failed(tmp_path, capsys):
    env = Env(Config("<test>"), commands=CommandRunner({"PATH": str(tmp_path)}))
    assert cli.run(parse(), env) == cli.DNF_FAILED
    assert "dnf is not installed" in capsys.readouterr().err
    assert Path(tmp_path).is_dir()


def _wired() -> bool:
    from agent import cli as agent_cli

    return "patch" in agent_cli.handlers()


@pytest.mark.root
@pytest.mark.skipif(not _wired(), reason="agent/cli.py does not dispatch 'patch' yet")
def test_steward_patch_check_on_the_command_line(bed: Bed, steward):
    done = steward("patch", "check", "--installroot", str(bed.root), "--format", "json")
    assert done.returncode == cli.PENDING, done.stderr
    doc = json.loads(done.stdout)
    validate(doc, "patch-check.schema.json")  # what the Cockpit page reads
    assert doc["all"] == 2
    done = steward("patch", "check", "--installroot", str(bed.root / "nope"))
    assert done.returncode == 2 and "not a directory" in done.stderr


def test_a_one_shot_check_judges_the_daemons_fresh_look_without_running_dnf(tmp_path):
    """Nagios runs steward check every few minutes: dnf (slow, refreshing metadata) is asked
    only when the daemon's last look is older than the interval."""
    from patch.pending import write_state

    state = tmp_path / "state"
    look = pending(2, issued=1.0e9)
    write_state(state, Pending(look.updates, look.advisories, 1.0e9 + 3 * DAY))
    no_dnf = CommandRunner({"PATH": str(tmp_path)})  # any dnf call would be "not installed"

    fresh = Env(Config("<test>"), commands=no_dnf, state_dir=state,
                clock=FakeClock(1.0e9 + 3 * DAY + 3600))
    [r] = check().run(fresh)
    assert r.summary == "2 security updates pending (3 in all), oldest advisory 3 days"
    stale = Env(Config("<test>"), commands=no_dnf, state_dir=state,
                clock=FakeClock(1.0e9 + 4 * DAY))  # older than the 6 h interval: dnf is asked
    assert list(check().run(stale)) == []
