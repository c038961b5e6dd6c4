"""Parsers of dnf's text and the adapter's error mapping, on output captured from the real
dnf 4.14 (fixtures/README); no dnf needed."""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path

import pytest

from agent.system.commands import CommandNotFound, CommandRunner, CommandTimeout, Completed
from patch.dnf import (
    Dnf,
    DnfError,
    DnfLocked,
    DnfNotInstalled,
    DnfPluginMissing,
    DnfRepoError,
    DnfTimeout,
    DnfTransactionError,
)
from patch.dnfparse import (
    failed_repos,
    ignored_repos,
    lock_holder,
    parse_check_update,
    parse_history_ids,
    parse_history_info,
    parse_reboot_hint,
    parse_transaction_table,
    parse_updateinfo_info,
    parse_updateinfo_list,
    scriptlet_errors,
    split_nevra,
)
from patch.updateinfo import issued_and_reboot, parse_date

FIX = Path(__file__).parent / "fixtures"
EPOCH_EVR = "2:1.1.20250101git1234567-1.el9_4.steward.longrelease"


def fx(name: str) -> str:
    return (FIX / name).read_text()


def test_check_update_rows_with_epoch_long_names_and_long_repo_ids():
    ups = parse_check_update(fx("check-update-epoch.out"))
    assert [(u.name, u.evr, u.repo) for u in ups] == [
        ("epochpkg", EPOCH_EVR, "erepo-with-a-long-repository-id"),
        ("hello-appl", "1.1-1", "updates"), ("mailfilter", "1.1-1", "updates"),
        ("steward-test-package-with-a-rather-long-name-to-wrap", "1.1-1",
         "erepo-with-a-long-repository-id")]


def test_check_update_rows_that_overflow_onto_the_next_line_and_obsoletes():
    # dnf's fmtColumns: a value wider than its column ends the line, the row goes on below
    text = ("Last metadata expiration check: 0:01:02 ago on Mon Nov 23 07:06:07 2026.\n\n"
            "a-very-long-package-name-that-overflows-its-column.x86_64\n"
            "                                        1:2.3-4.el9          appstream\n"
            "short.noarch                            1.0-2.el9_4.with.a.very.long.release\n"
            "                                                             baseos\n"
            "bash.x86_64                             5.1.8-9.el9          baseos\n"
            "Security: kernel-core-5.14.0-427.el9.x86_64 is an installed security update\n"
            "Obsoleting Packages\n"
            "new.noarch                              2-1                  baseos\n"
            "    old.noarch                          1-1                  @System\n")
    assert [(u.name, u.arch, u.evr, u.repo) for u in parse_check_update(text)] == [
        ("a-very-long-package-name-that-overflows-its-column", "x86_64", "1:2.3-4.el9",
         "appstream"),
        ("short", "noarch", "1.0-2.el9_4.with.a.very.long.release", "baseos"),
        ("bash", "x86_64", "5.1.8-9.el9", "baseos")]


def test_progress_lines_are_not_rows():
    assert parse_check_update(fx("repo-skipped.out")) == []


def test_the_assumeno_table_lists_the_upgrades():
    rows = parse_transaction_table(fx("upgrade-assumeno.out"))
    assert rows == [("upgrade", "epochpkg", "noarch", EPOCH_EVR),
                    ("upgrade", "hello-appl", "noarch", "1.1-1"),
                    ("upgrade", "mailfilter", "noarch", "1.1-1"),
                    ("upgrade", "steward-test-package-with-a-rather-long-name-to-wrap",
                     "noarch", "1.1-1")]
    assert fx("upgrade-assumeno.err").strip() == "Operation aborted."


def test_table_sections_overflow_and_skipped_packages():
    text = ("Dependencies resolved.\n====\n Package   Arch   Version   Repository   Size\n====\n"
            "Installing:\n kernel-core   x86_64   5.14.0-503.el9   baseos   17 M\n"
            "Upgrading:\n a-package-with-a-name-longer-than-its-column\n"
            "            x86_64   1.2-3.el9   appstream   120 k\n"
            " newname   noarch   2-1   baseos   1.0 k\n"
            "     replacing  oldname.noarch 1-1\n"
            "Removing:\n kernel-core   x86_64   5.14.0-362.el9   @baseos   60 M\n"
            "Skipping packages with broken dependencies:\n broken  x86_64  1-1  epel  3 k\n"
            "\nTransaction Summary\n====\nInstall  1 Package\n")
    assert parse_transaction_table(text) == [
        ("install", "kernel-core", "x86_64", "5.14.0-503.el9"),
        ("upgrade", "a-package-with-a-name-longer-than-its-column", "x86_64", "1.2-3.el9"),
        ("upgrade", "newname", "noarch", "2-1"),
        ("remove", "kernel-core", "x86_64", "5.14.0-362.el9")]


def test_updateinfo_list_gives_type_severity_and_packages():
    listed = parse_updateinfo_list(fx("updateinfo-list.out"))
    assert {k: (v.type, v.severity, v.packages) for k, v in listed.items()} == {
        "RLSA-2025:0001": ("security", "Important", ["hello-appl-1.1-1.noarch"]),
        "RLBA-2025:0002": ("bugfix", "None", ["mailfilter-1.1-1.noarch"])}
    odd = parse_updateinfo_list("FEDORA-2025-1 Unknown/Sec. a-1-1.noarch\n"
                                "FEDORA-2025-2 enhancement  b-1-1.noarch\n")
    assert [(v.type, v.severity) for v in odd.values()] == [("security", "None"),
                                                           ("enhancement", "None")]


@pytest.mark.parametrize("name", ["updateinfo-info.out", "updateinfo-info-verbose.out"])
def test_updateinfo_info_fields_and_continued_lines(name):
    info = parse_updateinfo_info(fx(name))
    sec = info["RLSA-2025:0001"]
    assert sec["Title"] == ["Important: hello-appl security update"]
    assert sec["CVEs"] == ["CVE-2025-0001"] and sec["Severity"] == ["Important"]
    assert sec["Description"] == ["Fixes a buffer overflow (CVE-2025-0001).",
                                  "Second line of the description."]
    assert sec["Updated"] == ["2025-01-16 10:00:00"]
    assert info["RLBA-2025:0002"]["Type"] == ["bugfix"]
    if "verbose" in name:
        assert sec["Files"] == ["hello-appl-1.1-1.noarch.rpm"]


def test_history_info_pairs_upgrade_with_upgraded():
    tx = parse_history_info(fx("history-info-upgrade.out"))
    assert tx.return_code == "Success" and tx.scriptlet_errors == ()
    assert [str(c) for c in tx.changes] == ["hello-appl.noarch: 1.0-1 -> 1.1-1",
                                            "mailfilter.noarch: 1.0-1 -> 1.1-1"]


def test_history_info_keeps_scriptlet_output_and_failures():
    post = parse_history_info(fx("history-info-postfail.out"))
    assert post.return_code == "Success"
    assert post.scriptlet_errors == (
        'error: lua script failed: [string "%post(postfail-1.1-1.noarch)"]:2: postfail on '
        'purpose',)
    pre = parse_history_info(fx("history-info-prefail.out"))
    assert (pre.id, pre.return_code) == (3, "Failure: 1")
    assert [(c.name, c.action, c.to_evr) for c in pre.changes] == [
        ("prefail", "install", "1.1-1")]


def test_history_list_ids_newest_first():
    assert parse_history_ids(fx("history-list.out")) == [2, 1]
    assert parse_history_ids("ID     | Command line | Date and time | Action(s) | Altered\n"
                             "-----\n") == []


def test_scriptlet_failures_from_dnf_and_rpm():
    sh = fx("upgrade-postfail-sh.out") + fx("upgrade-postfail-sh.err")
    assert scriptlet_errors(sh) == (
        "warning: %post(shfail-1.1-1.noarch) scriptlet failed, exit status 1",
        "Error in POSTIN scriptlet in rpm package shfail")
    lua = fx("upgrade-postfail-lua.err")
    assert scriptlet_errors(lua) == ("Error in POSTIN scriptlet in rpm package postfail",)
    assert scriptlet_errors(fx("history-info-upgrade.out")) == ()


def test_lock_repo_and_reboot_messages():
    assert lock_holder(fx("locked-exit-on-lock.err")) == 4242
    assert lock_holder(fx("locked-waiting.out")) == 4242
    # skip_if_unavailable=False: dnf stops at the first repository it cannot reach
    assert failed_repos(fx("repo-unreachable.err")) == ["dead"]
    assert failed_repos(fx("repo-skipped.err")) == ["dead", "gone"]
    assert ignored_repos(fx("repo-skipped.err")) == ["dead", "gone"]
    assert parse_reboot_hint(fx("needs-restarting-r.out")) == ["linux-firmware"]


def test_split_nevra():
    assert split_nevra("kernel-core-5.14.0-503.el9.x86_64") == (
        "kernel-core", "5.14.0-503.el9", "x86_64")
    assert split_nevra("bind-32:9.16.23-18.el9.x86_64") == ("bind", "32:9.16.23-18.el9",
                                                            "x86_64")
    with pytest.raises(ValueError):
        split_nevra("nonsense")


def test_issued_and_reboot_come_from_the_cached_updateinfo(tmp_path):
    xml = ('<updates><update type="security"><id>A-1</id><issued date="2025-01-15 10:00:00"/>'
           '<pkglist><collection><package name="k"><reboot_suggested>True</reboot_suggested>'
           '</package></collection></pkglist></update>'
           '<update type="bugfix"><id>A-2</id><issued date="1738368000"/></update>'
           '<update><id>A-3</id></update></updates>')
    gz = tmp_path / "updates-0123/repodata/abc-updateinfo.xml.gz"
    gz.parent.mkdir(parents=True)
    gz.write_bytes(gzip.compress(xml.encode()))
    xz = tmp_path / "other-4567/repodata/def-updateinfo.xml.xz"
    xz.parent.mkdir(parents=True)
    xz.write_bytes(lzma.compress(b"<updates><update><id>B-1</id><issued date='2024-12-31'/>"
                                 b"</update></updates>"))
    found = issued_and_reboot(tmp_path, ["A-1", "A-2", "B-1", "missing"])
    assert found == {"A-1": (1736935200.0, True), "A-2": (1738368000.0, False),
                     "B-1": (1735603200.0, False)}
    (tmp_path / "bad-1/repodata").mkdir(parents=True)
    (tmp_path / "bad-1/repodata/x-updateinfo.xml").write_text("<updates><update>")
    assert issued_and_reboot(tmp_path, ["A-1"])["A-1"][1] is True
    assert parse_date("yesterday") is None


class Canned(CommandRunner):
    """Answers each dnf run with the next canned (code, stdout, stderr) or exception."""

    def __init__(self, *answers):
        super().__init__()
        self.answers = list(answers)
        self.calls = []

    def run(self, argv, *, timeout=30.0, ok_codes=(0,), input=None):
        self.calls.append(list(argv))
        a = self.answers.pop(0)
        if isinstance(a, Exception):
            raise a
        code, out, err = a
        return Completed(tuple(argv), code, out, err)


def test_exit_200_is_locked():
    dnf = Dnf(Canned((200, "", fx("locked-exit-on-lock.err"))))
    with pytest.raises(DnfLocked) as err:
        dnf.check_update()
    assert err.value.pid == 4242
    argv = dnf.runner.calls[0]
    assert argv[:3] == ["dnf", "--setopt=exit_on_lock=True",
                        "--setopt=skip_if_unavailable=False"]
    assert "--installroot" not in " ".join(argv) and argv[-2:] == ["check-update", "--refresh"]


def test_installroot_arguments(tmp_path):
    argv = Dnf(CommandRunner(), tmp_path).argv(["check-update"])
    assert argv[3:] == [f"--installroot={tmp_path}", "--releasever=9",
                        f"--setopt=reposdir={tmp_path}/etc/yum.repos.d", "check-update"]
    assert not any("cachedir" in a for a in argv)  # dnf puts the root in front itself


def test_repo_errors_missing_dnf_timeouts_and_unparsed_output():
    with pytest.raises(DnfRepoError) as err:
        Dnf(Canned((1, "", fx("repo-unreachable.err")))).check_update()
    assert err.value.repos == ["dead"]
    with pytest.raises(DnfNotInstalled):
        Dnf(Canned(CommandNotFound(["dnf"], None, ""))).check_update()
    with pytest.raises(DnfTimeout):
        Dnf(Canned(CommandTimeout(["dnf"], None, "", "timed out after 1 s")),
            Path("/nonexistent")).check_update()
    with pytest.raises(DnfError, match="no package row"):
        Dnf(Canned((100, "something new\n", ""))).check_update()
    with pytest.raises(DnfError, match="Error: Problem: conflicting requests"):
        Dnf(Canned((1, "", "Error: \n Problem: conflicting requests\n"))).check_update()


def test_a_scriptlet_error_with_exit_0_is_a_transaction_error():
    runner = Canned((0, fx("history-list.out"), ""),
                    (0, fx("upgrade-postfail-sh.out"), fx("upgrade-postfail-sh.err")),
                    (0, fx("history-list.out").replace("     2 |", "     3 |", 1), ""),
                    (0, fx("history-info-upgrade.out"), ""))
    with pytest.raises(DnfTransactionError) as err:
        Dnf(runner).upgrade()
    assert err.value.returncode == 0 and err.value.transaction is not None
    assert "Error in POSTIN scriptlet in rpm package shfail" in str(err.value)
    assert runner.calls[1][-3:] == ["-y", "upgrade", "--refresh"]


def test_a_failed_transaction_carries_what_history_recorded():
    runner = Canned((0, fx("history-list.out"), ""),
                    (1, fx("install-prefail.out"), fx("install-prefail.err")),
                    (0, fx("history-list.out").replace("     2 |", "     3 |", 1), ""),
                    (0, fx("history-info-prefail.out"), ""))
    with pytest.raises(DnfTransactionError) as err:
        Dnf(runner).upgrade(packages=["prefail"])
    assert "Error: Transaction failed" in str(err.value)
    assert err.value.transaction.return_code == "Failure: 1"


def test_needs_restarting_missing_falls_back_to_install_times(tmp_path, monkeypatch):
    runner = Canned((1, "", fx("needs-restarting-missing.err")),
                    (2, "glibc\t1000\nsystemd\t3000\n", "package kernel is not installed\n"))
    (tmp_path / "etc/dnf/plugins/needs-restarting.d").mkdir(parents=True)
    (tmp_path / "etc/dnf/plugins/needs-restarting.d/mail.conf").write_text("openssl-libs\n")
    monkeypatch.setattr("patch.reboot.boot_time", lambda now: now - 1000.0)
    hint = Dnf(runner, tmp_path).reboot_hint(3000.0)  # booted at 2000
    assert (hint.needed, hint.packages, hint.source) == (True, ("systemd",), "installtime")
    rpm = runner.calls[1]
    assert rpm[:4] == ["rpm", "-q", "--qf", "%{NAME}\t%{INSTALLTIME}\n"]
    assert "openssl-libs" in rpm and "kernel-core" in rpm and str(tmp_path) in rpm
    with pytest.raises(DnfPluginMissing):
        Dnf(Canned((1, "", fx("needs-restarting-missing.err")))).services_needing_restart()
