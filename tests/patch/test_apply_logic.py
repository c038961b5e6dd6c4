"""The parts of ``steward patch apply`` that need no dnf: the reboot policy and its loop guard,
the boot marker read at the next start, health comparison, restarts through the systemd
adapter, and what an outcome means (headline, exit code)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.config import Config
from agent.env import Env
from agent.model import Result, Status
from agent.registry import Registry
from agent.system.systemd import UnitState
from patch.apply import Patcher, Request
from patch.dnfparse import Advisory, Change, Transaction
from patch.health import Health, better, worse
from patch.outcome import Outcome, Restart, Rollback
from patch.reboot import RebootHint
from patch.rebooting import after_reboot, decide, guard, is_kernel, record
from patch.report import render

# --- the reboot policy ----------------------------------------------------------------------


def test_when_needed_reboots_for_a_core_package_or_what_needs_restarting_reports():
    d = decide("when-needed", ["hello-appl", "glibc"])
    assert (d.needed, d.reboot, d.pending) == (("glibc",), True, False)
    assert not decide("when-needed", ["hello-appl"]).needed
    earlier = RebootHint(True, ("systemd",), "needs-restarting")  # updated by an earlier run
    assert decide("when-needed", [], earlier).needed == ("systemd",)
    assert decide("when-needed", ["openssl-libs"], extra_core=["openssl-libs"]).reboot


def test_never_only_reports_the_reboot_as_pending():
    d = decide("never", ["kernel-core"])
    assert (d.needed, d.reboot, d.pending) == (("kernel-core",), False, True)
    assert d.why_not == "reboot policy is never"


def test_always_after_kernel_reboots_for_a_kernel_only():
    assert decide("always-after-kernel", ["kernel-core", "kernel-modules"]).reboot
    glibc = decide("always-after-kernel", ["glibc"])
    assert glibc.pending and "no kernel was updated" in glibc.why_not
    assert not decide("always-after-kernel", ["kernel-headers", "kernel-tools"]).needed


def test_kernel_names():
    assert all(map(is_kernel, ["kernel", "kernel-core", "kernel-rt-core", "kernel-64k",
                               "kernel-modules-extra", "kernel-uek"]))
    assert not any(map(is_kernel, ["kernel-headers", "kernel-devel", "kernel-tools-libs",
                                   "kernel-srpm-macros", "kernelshark"]))


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="not one of never, when-needed"):
        decide("sometimes", [])


# --- the loop guard and the boot marker -------------------------------------------------------

def test_one_reboot_per_window_even_after_the_marker_was_settled(tmp_path):
    now = time.time()
    assert guard(tmp_path, now) == ""
    record(tmp_path, now=now, window_end=now + 3600, command=["/usr/bin/systemctl", "reboot"],
           packages=["kernel-core"], boot="boot-1")
    assert "a reboot was already requested at" in guard(tmp_path, now + 60)
    news = after_reboot(tmp_path, now + 120, current_boot="boot-2")
    assert news is not None and news.happened
    assert not (tmp_path / "patch/reboot.json").exists()
    settled = json.loads((tmp_path / "patch/last-reboot.json").read_text())
    assert settled["state"] == "done" and settled["boot_id"] == "boot-1"
    assert guard(tmp_path, now + 600) != ""  # the window is still open
    assert guard(tmp_path, now + 3601) == ""  # the next window may reboot again


def test_after_reboot_with_another_boot_id_says_it_happened(tmp_path):
    now = time.time()
    record(tmp_path, now=now, window_end=now + 3600, command=["/usr/bin/systemctl", "reboot"],
           packages=["linux-firmware"], boot="boot-1")
    news = after_reboot(tmp_path, now + 90, current_boot="boot-2")
    assert news is not None
    assert (news.happened, news.status, news.packages) == (True, Status.OK,
                                                           ("linux-firmware",))
    assert news.summary.startswith("rebooted after patching (for linux-firmware)")
    assert after_reboot(tmp_path, now + 100, current_boot="boot-2") is None  # said once


def test_after_reboot_in_the_same_boot_waits_then_says_it_did_not_happen(tmp_path):
    now = time.time()
    record(tmp_path, now=now, window_end=now + 3600, command=["/usr/bin/systemctl", "reboot"],
           packages=["kernel-core"], boot="boot-1")
    assert after_reboot(tmp_path, now + 30, current_boot="boot-1") is None  # going down
    assert (tmp_path / "patch/reboot.json").exists()
    news = after_reboot(tmp_path, now + 600, current_boot="boot-1")
    assert news is not None and not news.happened and news.status is Status.CRIT
    assert "did not happen: '/usr/bin/systemctl reboot' was run" in news.summary
    assert not (tmp_path / "patch/reboot.json").exists()
    assert json.loads((tmp_path / "patch/last-reboot.json").read_text())["state"] == \
        "not-done"


def test_after_reboot_without_a_marker_has_nothing_to_say(tmp_path):
    assert after_reboot(tmp_path, 1.0e9) is None


def test_the_marker_holds_this_boots_id_by_default(tmp_path):
    record(tmp_path, now=1.0, window_end=2.0, command=["/x"], packages=[])
    marker = json.loads((tmp_path / "patch/reboot.json").read_text())
    assert marker["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


# --- health compared ----------------------------------------------------------------------

def health(**statuses: Status) -> Health:
    return Health(tuple(Result(k.replace("_", ":"), s, f"{k} {s.name}")
                        for k, s in statuses.items()), 0.1)


def test_worse_is_a_higher_severity_or_a_new_failing_result():
    before = health(a=Status.OK, b=Status.WARN, c=Status.CRIT, d=Status.WARN,
                    gone=Status.CRIT)
    after = health(a=Status.WARN, b=Status.CRIT, c=Status.CRIT, d=Status.OK,
                   new=Status.UNKNOWN, newok=Status.OK)
    assert [(s.check, s.before, s.after) for s in worse(before, after)] == [
        ("b", Status.WARN, Status.CRIT), ("new", None, Status.UNKNOWN),
        ("a", Status.OK, Status.WARN)]
    assert [(s.check, s.after) for s in better(before, after)] == [("d", Status.OK),
                                                                   ("gone", None)]
    assert after.counts() == "2 OK, 1 WARN, 1 UNKNOWN, 2 CRIT"
    assert not worse(before, before)


# --- restarts, with a stand-in dnf and systemd ----------------------------------------------

class FakeSystemd:
    def __init__(self, states: dict[str, list[str]]) -> None:
        self.states = states  # unit -> active states shown, one per show()
        self.restarted: list[str] = []

    def restart(self, unit: str) -> str:
        self.restarted.append(unit)
        return f"systemctl restart {unit}"

    def show(self, units: list[str]) -> list[UnitState]:
        [unit] = units
        seq = self.states[unit]
        active = seq.pop(0) if len(seq) > 1 else seq[0]
        sub = {"active": "running", "failed": "failed"}.get(active, "start")
        return [UnitState(unit, unit, "loaded", active, sub, "", 0, "enabled")]


def test_services_needing_a_restart_are_restarted_one_by_one_and_each_reported(tmp_path):
    systemd = FakeSystemd({"postfix.service": ["activating", "active"],
                           "named.service": ["failed"]})
    dnf = SimpleNamespace(services_needing_restart=lambda: [
        "postfix.service", "dbus-broker.service", "named.service",
        "steward-patch-20250601-030000.service"])
    env = Env(Config("test"), systemd=systemd, state_dir=tmp_path)  # type: ignore[arg-type]
    p = Patcher(env, Registry(), dnf, host="h", report=lambda out: None,  # type: ignore[arg-type]
                sleep=lambda s: None)
    out = Outcome("h", 0.0, "all")
    p._restart(Request(security=False), out)
    assert systemd.restarted == ["postfix.service", "named.service"]
    assert [(r.unit, r.ok, r.state) for r in out.restarts] == [
        ("postfix.service", True, "active (running)"),
        ("dbus-broker.service", True, "not restarted: a reboot restarts it"),
        ("named.service", False, "failed (failed)"),
        ("steward-patch-20250601-030000.service", True,
         "not restarted: a reboot restarts it")]
    assert out.problems() == ["restart failed: named.service"] and out.exit_code() == 1


# --- what an outcome means --------------------------------------------------------------------

def tx(*names: str) -> Transaction:
    return Transaction(7, tuple(Change(n, "noarch", "upgrade", "1.0-1", "1.1-1")
                                for n in names), return_code="Success")


def test_a_patch_that_went_well_but_was_not_delivered_exits_1():
    out = Outcome("h", 0.0, "security", transaction=tx("a", "b"))
    assert (out.headline(), out.status, out.exit_code()) == (
        "patched: 2 packages, 0 security advisories", Status.OK, 0)
    out.delivered = False
    assert out.exit_code() == 1


def test_failures_come_first_and_a_failure_is_exit_3():
    out = Outcome("h", 0.0, "all", transaction=tx("a"), failure="dnf transaction error: x",
                  failure_kind="transaction")
    out.worse = tuple(worse(health(a=Status.OK), health(a=Status.CRIT)))
    out.delivered = False
    assert out.headline() == "patch FAILED: dnf transaction error: x; health worse after " \
                             "patching (a)"
    assert (out.status, out.exit_code()) == (Status.CRIT, 3)


def test_a_rollback_that_recovered_is_still_crit_and_exit_1():
    out = Outcome("h", 0.0, "all", transaction=tx("a"))
    out.worse = tuple(worse(health(a=Status.OK), health(a=Status.CRIT)))
    out.rollback = Rollback("dnf history undo 7", ran=True, transaction=tx("a"),
                            health=health(a=Status.OK))
    assert out.rollback.recovered
    assert out.headline() == "patch FAILED: health worse after patching (a); rolled back, " \
                             "health recovered"
    assert (out.status, out.exit_code()) == (Status.CRIT, 1)


def test_a_reboot_pending_counts_on_the_host_only():
    out = Outcome("h", 0.0, "all", transaction=tx("glibc"), reboot=decide("never", ["glibc"]))
    assert out.exit_code() == 1 and out.headline().endswith("; reboot pending")
    image = Outcome("h", 0.0, "all", transaction=tx("glibc"), installroot="/img",
                    host_actions=False, reboot=decide("never", ["glibc"]))
    assert image.exit_code() == 0


def test_the_report_says_everything_in_text_and_escaped_html():
    out = Outcome("mail1", 1000.0, "all", exclude=("kernel*",), finished=1075.0,
                  history_before=6, history_read=True, transaction=tx("openssl", "glibc"),
                  backup="generation 20250601-030000 committed in /mnt/usb",
                  attempts=["03:00:01: another dnf holds the lock (pid 42: <dnf>)"],
                  advisories=(Advisory("RLSA-2025:9", "security", "Critical", None,
                                       ("openssl-1.1-1.noarch",), ("CVE-2025-9",),
                                       title="Critical: openssl & friends"),),
                  restarts=[Restart("postfix.service", True, "active (running)")],
                  reboot=decide("never", ["glibc"]), notes=["pending updates not recounted"])
    out.health_before = health(a=Status.OK)
    out.health_after = health(a=Status.WARN)
    out.worse = tuple(worse(out.health_before, out.health_after))
    out.rollback = Rollback("dnf history undo 7", ran=True, transaction=tx("openssl"),
                            health=health(a=Status.OK))
    subject, text, html = render(out, None, now=2000.0)
    assert subject == "[steward] mail1: patch FAILED: health worse after patching (a); " \
                      "rolled back, health recovered; reboot pending"
    for line in ("Mode: all, excluding kernel*",
                 "Pre-patch backup: generation 20250601-030000 committed in /mnt/usb",
                 "  03:00:01: another dnf holds the lock (pid 42: <dnf>)",
                 "  openssl.noarch: 1.0-1 -> 1.1-1 (upgrade)",
                 "  RLSA-2025:9 security Critical CVE-2025-9 Critical: openssl & friends",
                 "  postfix.service: ok, active (running)",
                 "Reboot: PENDING (glibc), not done: reboot policy is never",
                 "Health before: 1 OK (0.1 s)", "Health after:  1 WARN (0.1 s)",
                 "  worse: a: OK -> WARN: a WARN", "Rollback: dnf history undo 7",
                 "  run: transaction 7", "  health after the rollback: 1 OK: recovered",
                 "dnf history: 6 before, this patch is transaction 7 (Success)",
                 "Time taken: 1 min 15 s", "  - pending updates not recounted"):
        assert line + "\n" in text, line
    assert "openssl &amp; friends" in html and "(pid 42: &lt;dnf&gt;)" in html
    assert "#c62828" in html  # CRIT
    # [notify.email] language = "ja": the same report in Japanese, values untouched.
    ja_subject, ja_text, ja_html = render(out, None, "ja", now=2000.0)
    assert ja_subject.startswith("[steward] mail1: パッチ適用の結果: patch FAILED")
    for line in ("モード: all、除外 kernel*", "  postfix.service: 正常, active (running)",
                 "適用前の状態: 1 OK (0.1 s)", "適用後の状態: 1 WARN (0.1 s)",
                 "ロールバック: dnf history undo 7", "所要時間: 1 min 15 s"):
        assert line + "\n" in ja_text, line
    assert "openssl &amp; friends" in ja_html and "パッチ適用前後の状態" in ja_html


def test_the_report_is_kept_as_json_with_health_before_and_after(tmp_path):
    """patch/last-report.json, as patch.report.publish writes it (here without mail), and
    ``patch last``'s reading of it: the document the Cockpit page shows."""
    import io

    from patch import lastreport
    from patch.report import publish
    from tests.clocks import FakeClock
    from tests.schemas import validate

    out = Outcome("mail1", 1000.0, "security", finished=1075.0, history_read=True,
                  transaction=tx("openssl"), reboot=decide("never", ["glibc"]))
    out.health_before = health(a=Status.OK, b=Status.WARN)
    out.health_after = health(a=Status.CRIT, b=Status.OK)
    out.worse = tuple(worse(out.health_before, out.health_after))
    out.better = tuple(better(out.health_before, out.health_after))
    printed = io.StringIO()
    publish(out, Config("<test>"), tmp_path, clock=FakeClock(1080.0), stream=printed)
    doc = lastreport.read(tmp_path)
    validate(doc, "patch-last.schema.json")
    rep = doc["report"]
    assert (rep["status"], rep["started"], rep["finished"], rep["duration_s"]) == (
        "CRIT", "1970-01-01T00:16:40Z", "1970-01-01T00:17:55Z", 75.0)
    assert rep["health"]["before"] == {"status": "WARN", "counts": "1 OK, 1 WARN",
                                       "seconds": 0.1, "checks": 2}
    assert rep["health"]["after"]["status"] == "CRIT"
    assert rep["health"]["worse"] == [{"check": "a", "before": "OK", "after": "CRIT",
                                       "summary": "a CRIT"}]
    assert rep["health"]["better"] == [{"check": "b", "before": "WARN", "after": "OK",
                                        "summary": "b OK"}]
    assert rep["packages"] == [{"name": "openssl", "arch": "noarch", "action": "upgrade",
                                "from": "1.0-1", "to": "1.1-1"}]
    assert rep["text"] and printed.getvalue().startswith(rep["text"])
    assert lastreport.text(doc) == rep["text"]
