"""The SELinux rule family against fixture sysroots shaped like a RHEL 9 system, the real
ausearch (Debian's auditd package) on a RHEL 9 audit.log, and the live Debian host."""

# ruff: noqa: E501  (audit records are kept whole, as auditd writes them)

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.model import Status
from agent.system.commands import CommandRunner
from checks.audit import selinux
from checks.audit.base import Context, Finding
from checks.audit.options import AuditOptions
from tests.clocks import FakeClock

EL9_CONFIG = """\
# This file controls the state of SELinux on the system.
# SELINUX= can take one of these three values:
#     enforcing - SELinux security policy is enforced.
SELINUX={mode}
# SELINUXTYPE= can take one of these three values:
SELINUXTYPE={policy}
"""


def avc_log(now: float) -> str:
    """A RHEL 9 audit.log: httpd denials an hour and ten minutes ago and one three days ago,
    a USER_AVC from systemd for postfix, and a process whose name audit hex-encoded."""
    t1, t2, old = int(now) - 3600, int(now) - 600, int(now) - 3 * 86400
    return f"""\
type=SERVICE_START msg=audit({t1}.100:100): pid=1 uid=0 auid=4294967295 ses=4294967295 subj=system_u:system_r:init_t:s0 msg='unit=httpd comm="systemd" exe="/usr/lib/systemd/systemd" hostname=? addr=? terminal=? res=success'UID="root" AUID="unset"
type=AVC msg=audit({old}.512:90): avc:  denied  {{ read }} for  pid=999 comm="httpd" name="old.html" dev="dm-0" ino=1 scontext=system_u:system_r:httpd_t:s0 tcontext=unconfined_u:object_r:user_home_t:s0 tclass=file permissive=0
type=AVC msg=audit({t1}.204:457): avc:  denied  {{ read }} for  pid=2114 comm="httpd" name="index.html" dev="dm-0" ino=3412 scontext=system_u:system_r:httpd_t:s0 tcontext=unconfined_u:object_r:user_home_t:s0 tclass=file permissive=0
type=SYSCALL msg=audit({t1}.204:457): arch=c000003e syscall=257 success=no exit=-13 a0=ffffff9c a1=7f5c a2=80000 a3=0 items=0 ppid=2110 pid=2114 auid=4294967295 uid=48 gid=48 euid=48 suid=48 fsuid=48 egid=48 sgid=48 fsgid=48 tty=(none) ses=4294967295 comm="httpd" exe="/usr/sbin/httpd" subj=system_u:system_r:httpd_t:s0 key=(null)ARCH=x86_64 SYSCALL=openat AUID="unset" UID="apache" GID="apache"
type=PROCTITLE msg=audit({t1}.204:457): proctitle=2F7573722F7362696E2F6874747064002D44464F524547524F554E44
type=AVC msg=audit({t1 + 5}.311:460): avc:  denied  {{ read }} for  pid=2115 comm="httpd" name="about.html" dev="dm-0" ino=3413 scontext=system_u:system_r:httpd_t:s0 tcontext=unconfined_u:object_r:user_home_t:s0 tclass=file permissive=0
type=AVC msg=audit({t2}.881:512): avc:  denied  {{ name_bind }} for  pid=3001 comm="httpd" src=8081 scontext=system_u:system_r:httpd_t:s0 tcontext=system_u:object_r:unreserved_port_t:s0 tclass=tcp_socket permissive=0
type=USER_AVC msg=audit({t2}.900:513): pid=1 uid=0 auid=4294967295 ses=4294967295 subj=system_u:system_r:init_t:s0 msg='avc:  denied  {{ status }} for auid=n/a uid=0 gid=0 path="/etc/systemd/system/foo.service" cmdline="/usr/bin/systemctl status foo" function="mac_selinux_filter" scontext=system_u:system_r:postfix_master_t:s0 tcontext=system_u:object_r:systemd_unit_file_t:s0 tclass=service permissive=0  exe="/usr/lib/systemd/systemd" sauid=0 hostname=? addr=? terminal=?'UID="root" AUID="unset" SAUID="root"
type=AVC msg=audit({t2 + 1}.002:514): avc:  denied  {{ write }} for  pid=4100 comm=6D7920617070 name="spool" dev="dm-0" ino=77 scontext=system_u:system_r:unconfined_service_t:s0 tcontext=system_u:object_r:var_t:s0 tclass=dir permissive=1
"""


@dataclass(frozen=True)
class WithoutAusearch(Context):
    """The same system on a host where audit's tools are not installed."""

    def tool(self, name: str) -> str | None:
        return None if name == "ausearch" else super().tool(name)


def context(root: Path, cls: type[Context] = Context, now: float | None = None) -> Context:
    """``now``: where the clock stands (the real time when not given)."""
    return cls(root, AuditOptions(), CommandRunner(), FakeClock(time.time() if now is None
                                                               else now))


def write(root: Path, path: str, text: str) -> Path:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def el9(root: Path, mode: str = "enforcing", policy: str = "targeted",
        enforce: str | None = "1") -> Path:
    write(root, "/etc/selinux/config", EL9_CONFIG.format(mode=mode, policy=policy))
    if enforce is not None:
        write(root, "/sys/fs/selinux/enforce", enforce)
    return root


def by_rule(findings: list[Finding]) -> dict[str, Finding]:
    return {f.rule: f for f in findings}


def test_enforcing_targeted_system_passes_every_rule(tmp_path: Path) -> None:
    found = by_rule(selinux.audit(context(el9(tmp_path))))
    assert {r: f.status for r, f in found.items()} == {
        "selinux.mode": Status.OK, "selinux.policy": Status.OK,
        "selinux.running": Status.OK, "selinux.cmdline": Status.OK}


@pytest.mark.parametrize("mode", ["permissive", "disabled"])
def test_permissive_or_disabled_at_boot_is_critical(tmp_path: Path, mode: str) -> None:
    found = by_rule(selinux.audit(context(el9(tmp_path, mode=mode, enforce="0"))))
    assert found["selinux.mode"].status is Status.CRIT
    assert found["selinux.mode"].found == f"SELINUX={mode}"
    assert "SELINUX=enforcing" in found["selinux.mode"].remedy


def test_missing_selinux_config_means_disabled_and_critical(tmp_path: Path) -> None:
    found = by_rule(selinux.audit(context(tmp_path)))
    assert found["selinux.mode"].status is Status.CRIT
    assert "SELinux disabled" in found["selinux.mode"].found


def test_minimum_policy_is_a_warning(tmp_path: Path) -> None:
    found = by_rule(selinux.audit(context(el9(tmp_path, policy="minimum"))))
    assert found["selinux.policy"].status is Status.WARN
    assert found["selinux.policy"].found == "SELINUXTYPE=minimum"


def test_permissive_now_while_configured_enforcing_warns_and_says_setenforce_1(
        tmp_path: Path) -> None:
    f = by_rule(selinux.audit(context(el9(tmp_path, enforce="0"))))["selinux.running"]
    assert f.status is Status.WARN
    assert (f.found, f.expected) == ("running permissive",
                                     "running enforcing (as /etc/selinux/config says)")
    assert f.remedy.startswith("setenforce 1")


def test_enforcing_now_while_configured_permissive_warns_about_the_next_boot(
        tmp_path: Path) -> None:
    f = by_rule(selinux.audit(context(el9(tmp_path, mode="permissive"))))["selinux.running"]
    assert f.status is Status.WARN
    assert "running enforcing" in f.found and "permissive" in f.expected
    assert "next boot" in f.remedy


def test_no_selinuxfs_in_the_sysroot_of_an_image_leaves_the_running_mode_unjudged(
        tmp_path: Path) -> None:
    assert "selinux.running" not in by_rule(selinux.audit(context(el9(tmp_path, enforce=None))))


def test_selinuxfs_without_enforce_file_means_running_disabled(tmp_path: Path) -> None:
    el9(tmp_path, enforce=None)
    (tmp_path / "sys/fs/selinux").mkdir(parents=True)
    f = by_rule(selinux.audit(context(tmp_path)))["selinux.running"]
    assert f.status is Status.WARN and f.found == "running disabled"
    assert "autorelabel" in f.remedy


def test_config_that_is_a_directory_is_unknown_naming_it(tmp_path: Path) -> None:
    (tmp_path / "etc/selinux/config").mkdir(parents=True)
    f = by_rule(selinux.audit(context(tmp_path)))["selinux.mode"]
    assert f.status is Status.UNKNOWN
    assert str(tmp_path / "etc/selinux/config") in f.found


def test_garbage_selinux_value_is_unknown_naming_the_file(tmp_path: Path) -> None:
    write(tmp_path, "/etc/selinux/config", "SELINUX=sometimes\n")
    f = by_rule(selinux.audit(context(tmp_path)))["selinux.mode"]
    assert f.status is Status.UNKNOWN
    assert "etc/selinux/config" in f.found and "sometimes" in f.found


def test_selinux_0_in_grub_defaults_is_critical_and_names_the_file(tmp_path: Path) -> None:
    el9(tmp_path)
    write(tmp_path, "/etc/default/grub", 'GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="crashkernel='
          '1G-4G:192M rd.lvm.lv=rl/root rhgb quiet selinux=0"\n')
    f = by_rule(selinux.audit(context(tmp_path)))["selinux.cmdline"]
    assert f.status is Status.CRIT
    assert f.found == "selinux=0 in /etc/default/grub GRUB_CMDLINE_LINUX"
    assert "grubby --update-kernel ALL --remove-args" in f.remedy


def test_enforcing_0_in_a_boot_loader_entry_is_critical(tmp_path: Path) -> None:
    el9(tmp_path)
    write(tmp_path, "/boot/loader/entries/abc-5.14.0-427.el9.x86_64.conf",
          "title Rocky Linux\nversion 5.14.0-427.el9.x86_64\nlinux /vmlinuz-5.14.0\n"
          "options root=/dev/mapper/rl-root ro enforcing=0 rhgb quiet\n")
    f = by_rule(selinux.audit(context(tmp_path)))["selinux.cmdline"]
    assert f.status is Status.CRIT
    assert "enforcing=0 in /boot/loader/entries/abc-5.14.0-427.el9.x86_64.conf" in f.found


def test_selinux_0_on_the_running_kernel_command_line_is_critical(tmp_path: Path) -> None:
    write(el9(tmp_path), "/proc/cmdline", "BOOT_IMAGE=(hd0,gpt2)/vmlinuz ro selinux=0\n")
    f = by_rule(selinux.audit(context(tmp_path)))["selinux.cmdline"]
    assert f.status is Status.CRIT and f.found == "selinux=0 in /proc/cmdline"


def test_unreadable_grub_defaults_is_unknown_naming_the_file(tmp_path: Path) -> None:
    (el9(tmp_path) / "etc/default/grub").mkdir(parents=True)
    f = by_rule(selinux.audit(context(tmp_path)))["selinux.cmdline"]
    assert f.status is Status.UNKNOWN and "etc/default/grub" in f.found


@pytest.mark.parametrize("cls", [Context, WithoutAusearch], ids=["ausearch", "file"])
def test_recent_denials_are_summarised_per_source_domain(tmp_path: Path,
                                                         cls: type[Context]) -> None:
    if cls is Context and shutil.which("ausearch", path="/usr/sbin:/sbin") is None:
        pytest.skip("ausearch is not installed (apt-get install -y auditd)")
    now = time.time()
    write(el9(tmp_path), selinux.AUDIT_LOG, avc_log(now))
    found = by_rule(selinux.audit(context(tmp_path, cls, now)))
    assert "selinux.avc" not in found
    httpd = found["selinux.avc.httpd_t"]
    assert httpd.status is Status.WARN
    assert httpd.found.startswith("3 denials, ")  # the one of three days ago is past
    assert "top comm httpd (3)" in httpd.found and "tclass file (2)" in httpd.found
    assert "index.html" in httpd.found
    assert "ausearch -m AVC -ts yesterday -c httpd | audit2why" in httpd.remedy
    assert "restorecon" in httpd.remedy and "semanage port" in httpd.remedy
    assert "setsebool -P" in httpd.remedy and "setenforce 0" not in httpd.remedy
    postfix = found["selinux.avc.postfix_master_t"]
    assert postfix.found.startswith("1 denial, ")
    assert "ausearch -m USER_AVC -ts yesterday --raw | grep -w postfix_master_t" in postfix.remedy
    assert "top comm systemd (1)" in postfix.found and "tclass service (1)" in postfix.found
    odd = found["selinux.avc.unconfined_service_t"]
    assert "top comm my app (1)" in odd.found and "1 only logged (permissive)" in odd.found


@pytest.mark.parametrize("cls", [Context, WithoutAusearch], ids=["ausearch", "file"])
def test_denials_older_than_a_day_leave_the_rule_passing(tmp_path: Path,
                                                        cls: type[Context]) -> None:
    now = time.time()
    write(el9(tmp_path), selinux.AUDIT_LOG, avc_log(now - 2 * 86400))
    found = by_rule(selinux.audit(context(tmp_path, cls, now)))
    assert found["selinux.avc"].status is Status.OK
    assert not [r for r in found if r.startswith("selinux.avc.")]


def test_no_audit_log_gives_no_denial_finding(tmp_path: Path) -> None:
    assert not [f for f in selinux.audit(context(el9(tmp_path))) if "avc" in f.rule]


def test_audit_log_that_is_a_directory_is_unknown_naming_it(tmp_path: Path) -> None:
    (el9(tmp_path) / "var/log/audit/audit.log").mkdir(parents=True)
    found = by_rule(selinux.audit(context(tmp_path, WithoutAusearch)))
    assert found["selinux.avc"].status is Status.UNKNOWN
    assert "var/log/audit/audit.log" in found["selinux.avc"].found


def test_live_debian_host_without_selinux_is_judged_without_error() -> None:
    found = by_rule(selinux.audit(context(Path("/"))))
    assert found["selinux.mode"].status is Status.CRIT  # Debian does not enable SELinux
    assert all(f.status is not Status.UNKNOWN for f in found.values()), found
