"""patch.dnf against the real dnf 4 in an installroot wired to local repositories."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time

import pytest

from agent.system.commands import CommandRunner
from patch.dnf import (
    Dnf,
    DnfLocked,
    DnfRepoError,
    DnfTransactionError,
    core_packages_in,
)
from tests.netutil import free_port
from tests.patch.repo import BUGFIX_ISSUED, SECURITY_ISSUED, Bed

pytestmark = pytest.mark.root


def names(updates):
    return sorted(u.name for u in updates)


def test_check_update_lists_both_pending_updates(dnf):
    ups = dnf.check_update()
    assert names(ups) == ["hello-appl", "mailfilter"]
    hello = next(u for u in ups if u.name == "hello-appl")
    assert (hello.arch, hello.evr, hello.repo) == ("noarch", "1.1-1", "updates")
    assert hello.nevra == "hello-appl-1.1-1.noarch"


def test_security_check_lists_only_the_package_with_a_security_advisory(dnf):
    assert names(dnf.check_update(security=True)) == ["hello-appl"]


def test_an_excluded_package_is_not_pending(dnf):
    assert names(dnf.check_update(exclude=["hello-*"])) == ["mailfilter"]


def test_advisories_carry_severity_cves_issued_date_and_reboot_flag(dnf):
    by_id = {a.id: a for a in dnf.advisories()}
    assert sorted(by_id) == ["RLBA-2025:0002", "RLSA-2025:0001"]
    sec = by_id["RLSA-2025:0001"]
    assert (sec.type, sec.severity) == ("security", "Important")
    assert sec.cves == ("CVE-2025-0001",)
    assert sec.packages == ("hello-appl-1.1-1.noarch",)
    assert sec.issued == SECURITY_ISSUED and sec.reboot_suggested
    assert sec.updated == SECURITY_ISSUED + 86400  # the <updated> date, shown by dnf
    assert sec.title == "Important: hello-appl security update"
    bug = by_id["RLBA-2025:0002"]
    assert (bug.type, bug.severity, bug.cves) == ("bugfix", "None", ())
    assert bug.issued == BUGFIX_ISSUED and not bug.reboot_suggested


def test_security_advisories_leave_out_bugfixes(dnf):
    assert [a.id for a in dnf.advisories(security=True, details=False)] == ["RLSA-2025:0001"]


def test_a_dry_run_says_what_would_change_and_changes_nothing(dnf, bed: Bed):
    tx = dnf.upgrade(dry_run=True)
    assert tx.dry_run and tx.id is None
    assert sorted(map(str, tx.changes)) == ["hello-appl.noarch: 1.0-1 -> 1.1-1",
                                            "mailfilter.noarch: 1.0-1 -> 1.1-1"]
    assert bed.versions()["hello-appl"] == "1.0-1"
    assert dnf.last_transaction_id() == 1


def test_security_upgrade_upgrades_only_the_package_with_an_advisory(dnf, bed: Bed):
    tx = dnf.upgrade(security=True)
    assert tx.id == 2 and tx.return_code == "Success"
    assert [(c.name, c.action, c.from_evr, c.to_evr) for c in tx.changes] == [
        ("hello-appl", "upgrade", "1.0-1", "1.1-1")]
    v = bed.versions()
    assert (v["hello-appl"], v["mailfilter"]) == ("1.1-1", "1.0-1")


def test_upgrade_of_all_upgrades_both(dnf, bed: Bed):
    tx = dnf.upgrade()
    assert sorted(c.name for c in tx.changes) == ["hello-appl", "mailfilter"]
    v = bed.versions()
    assert (v["hello-appl"], v["mailfilter"]) == ("1.1-1", "1.1-1")
    assert dnf.upgrade().id is None  # nothing left to do: no transaction


def test_upgrade_honours_exclude(dnf, bed: Bed):
    tx = dnf.upgrade(exclude=["hello-appl"])
    assert [c.name for c in tx.changes] == ["mailfilter"]
    assert bed.versions()["hello-appl"] == "1.0-1"


def test_a_failing_post_scriptlet_is_a_transaction_error_not_success(dnf, bed: Bed):
    bed.enable("broken")
    with pytest.raises(DnfTransactionError) as err:
        dnf.upgrade(packages=["postfail"])
    e = err.value
    assert e.returncode == 0  # dnf itself says "Complete!"
    assert "Error in POSTIN scriptlet in rpm package postfail" in str(e)
    assert e.transaction is not None and e.transaction.id == 2
    assert [c.name for c in e.transaction.changes] == ["postfail"]
    assert bed.versions()["postfail"] == "1.1-1"  # rpm does not roll back: it is in


def test_a_held_lock_is_reported_at_once_not_waited_for(dnf, bed: Bed):
    # dnf 4's lock is a file holding the pid of a live process (dnf/lock.py)
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (bed.root / "var/cache/dnf/metadata_lock.pid").write_text(str(holder.pid))
        started = time.monotonic()
        with pytest.raises(DnfLocked) as err:
            dnf.check_update()
        assert time.monotonic() - started < 20
        assert err.value.pid == holder.pid and err.value.returncode == 200
        assert f"pid {holder.pid}: sleep" in str(err.value)
    finally:
        holder.kill()
        holder.wait()


def test_waiting_for_a_lock_ends_at_the_timeout_as_locked(bed: Bed):
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (bed.root / "var/cache/dnf/metadata_lock.pid").write_text(str(holder.pid))
        waiting = Dnf(CommandRunner(), bed.root, timeout=3, wait_for_lock=True)
        started = time.monotonic()
        with pytest.raises(DnfLocked) as err:
            waiting.check_update()
        assert 3 <= time.monotonic() - started < 20
        assert err.value.pid == holder.pid and "timed out after 3 s" in str(err.value)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_a_real_dnf_transaction_holding_the_rpmdb_lock_makes_an_upgrade_locked(dnf, bed):
    bed.enable("slow")
    bg = subprocess.Popen([*dnf.argv(["-y", "-q", "upgrade", "slowpkg"])],
                          env={**os.environ, "LC_ALL": "C", "STEWARD_TEST_PRE_SLEEP": "120"},
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = bed.root / "var/lib/dnf/rpmdb_lock.pid"
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text().strip() == str(bg.pid)):
            assert bg.poll() is None and time.monotonic() < deadline, "dnf never took the lock"
            time.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(DnfLocked) as err:
            dnf.upgrade(packages=["hello-appl"])
        assert time.monotonic() - started < 30
        assert err.value.pid == bg.pid and "RPMDB" in err.value.stderr_tail
    finally:
        bg.send_signal(signal.SIGKILL)  # rpm defers SIGTERM to the end of a transaction
        bg.wait()


@pytest.mark.parametrize("kind", ["closed port", "missing folder"])
def test_an_unreachable_repository_is_a_repo_error(dnf, bed: Bed, tmp_path, kind):
    url = f"http://127.0.0.1:{free_port()}/repo" if kind == "closed port" else \
        (tmp_path / "no-such-repo").as_uri()
    bed.configure(extra={"faraway": url})
    with pytest.raises(DnfRepoError) as err:
        dnf.check_update()
    assert err.value.repos == ["faraway"] and err.value.returncode == 1
    assert "Failed to download metadata for repo 'faraway'" in err.value.stderr_tail
    with pytest.raises(DnfRepoError):
        dnf.upgrade(security=True)
    assert bed.versions()["hello-appl"] == "1.0-1"


def test_history_undo_restores_the_old_versions(dnf, bed: Bed):
    tx = dnf.upgrade()
    assert dnf.last_transaction_id() == tx.id == 2
    back = dnf.undo(2)
    assert back.id == 3
    assert sorted((c.name, c.action, c.from_evr, c.to_evr) for c in back.changes) == [
        ("hello-appl", "downgrade", "1.1-1", "1.0-1"),
        ("mailfilter", "downgrade", "1.1-1", "1.0-1")]
    v = bed.versions()
    assert (v["hello-appl"], v["mailfilter"]) == ("1.0-1", "1.0-1")
    assert dnf.history_info(2).changes == tx.changes


def test_a_core_package_installed_since_boot_calls_for_a_reboot(dnf, bed: Bed):
    now = time.time()  # rpm's install times are real ones
    hint = dnf.reboot_hint(now)
    assert (hint.needed, hint.packages, hint.source) == (True, ("linux-firmware",),
                                                         "needs-restarting")
    fallback = dnf.reboot_hint_from_installtime(now)
    assert (fallback.needed, fallback.packages) == (True, ("linux-firmware",))
    assert not dnf.reboot_hint_from_installtime(now, booted=now + 60).needed
    subprocess.run(["rpm", "-e", "--root", str(bed.root), "linux-firmware"], check=True)
    assert dnf.reboot_hint(now).needed is False


def test_services_cannot_be_told_in_an_installroot(dnf, caplog):
    caplog.set_level("INFO")
    assert dnf.services_needing_restart() == []
    assert "installroot" in caplog.text


def test_core_packages_are_dnfs_reboot_list():
    assert core_packages_in(["hello-appl", "kernel-core", "glibc", "openssl-libs"]) == [
        "glibc", "kernel-core"]
    assert core_packages_in(["openssl-libs"], extra=["openssl-libs"]) == ["openssl-libs"]


def test_a_held_rpm_transaction_lock_is_locked_too(dnf, bed: Bed):
    # rpm itself, PackageKit or any libdnf user takes rpm's lock, not dnf's pid files
    lock = subprocess.run(["rpm", "--eval", "%{_rpmlock_path}"], capture_output=True,
                          text=True, check=True).stdout.strip()
    path = bed.root / lock.lstrip("/")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        with pytest.raises(DnfLocked) as err:
            dnf.upgrade(security=True)
        assert err.value.pid == os.getpid() and err.value.returncode == 1
        assert "the rpm database is locked by" in str(err.value)
        assert "can't create transaction lock" in err.value.stderr_tail
    finally:
        os.close(fd)
    assert bed.versions()["hello-appl"] == "1.0-1"
