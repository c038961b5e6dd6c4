"""The firewalld rule family against zone trees written by the real firewall-offline-cmd
(Debian's firewalld package, never started on the host), and against a real firewalld running
in a private network and mount namespace."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from agent.model import Status
from agent.system.commands import CommandRunner, Completed
from checks.audit import firewall
from checks.audit.base import Context, Finding, Unreadable
from checks.audit.options import AuditOptions

pytestmark = [
    pytest.mark.skipif(shutil.which("firewall-offline-cmd") is None,
                       reason="firewalld is not installed (install it without starting it: "
                              "policy-rc.d exit 101, apt-get install -y firewalld)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a private mount namespace"),
]

APPLIANCE_UNITS = ("sshd", "postfix", "dovecot", "httpd", "named", "firewalld")
# the host's /etc/firewalld is never touched: each call sees the test's tree in its place
_IN_PRIVATE_ETC = 'mount --bind "$0" /etc/firewalld && exec "$@"'


def offline(etc: Path, *argv: str) -> None:
    """firewall-offline-cmd ARGV against ``etc`` bind-mounted onto /etc/firewalld."""
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                           _IN_PRIVATE_ETC, str(etc), "firewall-offline-cmd", *argv],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"firewall-offline-cmd {argv}: {done.stderr}{done.stdout}"


def sysroot(root: Path, units: Sequence[str] = APPLIANCE_UNITS,
            default: str = "public") -> Path:
    """An EL9-like sysroot: firewalld's shipped zones and services (the host package's), an
    empty /etc/firewalld with DefaultZone, and ``units`` enabled at boot."""
    etc = root / "etc/firewalld"
    etc.mkdir(parents=True)
    (etc / "firewalld.conf").write_text(f"DefaultZone={default}\nFirewallBackend=nftables\n")
    # a copy: a link to the host's would be followed inside the sysroot, back to itself
    for kind in ("zones", "services"):
        shutil.copytree(f"/usr/lib/firewalld/{kind}", root / f"usr/lib/firewalld/{kind}")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    for unit in units:
        (wants / f"{unit}.service").symlink_to(f"/usr/lib/systemd/system/{unit}.service")
    return root


def context(root: Path, **options: Any) -> Context:
    return Context(root, replace(AuditOptions(), **options), CommandRunner())


def by_rule(findings: list[Finding]) -> dict[str, Finding]:
    return {f.rule: f for f in findings}


def apply(etc: Path, remedy: str) -> None:
    """Carry out a remedy's firewall-cmd --permanent steps with firewall-offline-cmd."""
    for step in remedy.split(";", maxsplit=1)[0].split(" && "):
        argv = shlex.split(step)
        if argv == ["firewall-cmd", "--reload"]:
            continue
        assert argv[:2] == ["firewall-cmd", "--permanent"], step
        # the offline tool keeps --remove-service for its lokkit compatibility mode
        offline(etc, *(a.replace("--remove-service=", "--remove-service-from-zone=")
                       for a in argv[2:]))


def mail_web_dns(root: Path) -> Path:
    offline(root / "etc/firewalld", "--zone=public", *(f"--add-service={s}" for s in (
        "smtp", "smtp-submission", "smtps", "imaps", "pop3s", "http", "https", "dns")))
    return root


def test_appliance_zone_opening_only_its_services_passes(tmp_path: Path) -> None:
    found = by_rule(firewall.audit(context(mail_web_dns(sysroot(tmp_path)))))
    assert {r: f.status for r, f in found.items()} == {
        "firewall.enabled": Status.OK, "firewall.target.public": Status.OK,
        "firewall.open.public": Status.OK, "firewall.plaintext.public": Status.OK}
    assert found["firewall.open.public"].source == "/etc/firewalld/zones/public.xml"


def test_everything_unexpected_is_listed_and_the_remedy_closes_exactly_that(
        tmp_path: Path) -> None:
    etc = mail_web_dns(sysroot(tmp_path)) / "etc/firewalld"
    offline(etc, "--zone=public", "--add-service=cockpit")
    offline(etc, "--zone=public", "--add-port=8443/tcp")
    offline(etc, "--zone=public", "--add-forward-port=port=8080:proto=tcp:toport=80")
    offline(etc, "--zone=public", "--add-masquerade")
    offline(etc, "--zone=public", "--add-rich-rule=rule family=\"ipv4\" source "
            "address=\"10.0.0.0/8\" port port=\"3306\" protocol=\"tcp\" accept")
    f = by_rule(firewall.audit(context(tmp_path)))["firewall.open.public"]
    assert f.status is Status.WARN
    assert f.found == (
        "zone public (default) opens cockpit (9090/tcp), port 8443/tcp, forward-port "
        "port=8080:proto=tcp:toport=80, masquerade (routing for other hosts), rich rule 'rule "
        'family="ipv4" source address="10.0.0.0/8" port port="3306" protocol="tcp" accept\'')
    assert f.remedy.startswith("firewall-cmd --permanent --zone=public --remove-service=cockpit"
                               " && firewall-cmd --permanent --zone=public --remove-port=")
    apply(etc, f.remedy)
    after = by_rule(firewall.audit(context(tmp_path)))["firewall.open.public"]
    assert after.status is Status.OK, after.found


def test_allow_services_and_allow_ports_keep_the_sites_choices_quiet(tmp_path: Path) -> None:
    etc = sysroot(tmp_path) / "etc/firewalld"
    offline(etc, "--zone=public", "--add-service=cockpit", "--add-service=ldap")
    offline(etc, "--zone=public", "--add-port=8443/tcp", "--add-port=60010-60020/udp")
    found = by_rule(firewall.audit(context(
        tmp_path, allow_services=("cockpit",), allow_ports=("8443/tcp", "60000-61000/udp",
                                                           "389/tcp"))))
    assert found["firewall.open.public"].status is Status.OK, found["firewall.open.public"]


def test_a_port_range_reaching_beyond_allow_ports_is_reported(tmp_path: Path) -> None:
    offline(sysroot(tmp_path) / "etc/firewalld", "--zone=public", "--add-port=60990-61010/udp")
    f = by_rule(firewall.audit(context(tmp_path, allow_ports=("60000-61000/udp",))))
    assert f["firewall.open.public"].found.endswith("opens port 60990-61010/udp")


def test_services_of_units_not_enabled_are_unexpected(tmp_path: Path) -> None:
    mail_web_dns(sysroot(tmp_path, units=("sshd", "postfix", "firewalld")))
    found = by_rule(firewall.audit(context(tmp_path)))
    assert "firewall.plaintext.public" not in found  # no dovecot, no plaintext-mail rule
    opened = found["firewall.open.public"].found
    assert "imaps (993/tcp)" in opened and "http (80/tcp)" in opened and "dns (53/tcp" in opened
    assert "smtp (25/tcp)" not in opened
    assert "only dhcpv6-client, smtp, smtp-submission, smtps, ssh, submission" in \
        found["firewall.open.public"].expected


def test_a_zone_whose_target_is_accept_is_critical(tmp_path: Path) -> None:
    offline(sysroot(tmp_path) / "etc/firewalld", "--zone=trusted", "--add-interface=eth1")
    f = by_rule(firewall.audit(context(tmp_path)))["firewall.target.trusted"]
    assert f.status is Status.CRIT
    assert f.found == "zone trusted (eth1): target ACCEPT"
    assert "firewall-cmd --permanent --zone=trusted --set-target=default" in f.remedy


def test_zones_bound_to_nothing_are_not_judged(tmp_path: Path) -> None:
    found = by_rule(firewall.audit(context(sysroot(tmp_path))))
    assert not [r for r in found if r.endswith((".trusted", ".internal", ".drop"))]


def test_plaintext_imap_with_dovecot_warns_and_explains_ssl_required(tmp_path: Path) -> None:
    offline(sysroot(tmp_path) / "etc/firewalld", "--zone=public", "--add-service=imap")
    found = by_rule(firewall.audit(context(tmp_path)))
    plain = found["firewall.plaintext.public"]
    assert plain.status is Status.WARN and plain.found.endswith("opens imap (143/tcp)")
    assert "ssl = required" in plain.rationale
    assert plain.remedy.startswith("firewall-cmd --permanent --zone=public "
                                   "--remove-service=imap && firewall-cmd --reload")
    assert found["firewall.open.public"].status is Status.OK  # reported once, not twice


def test_admin_sources_move_ssh_out_of_the_public_zone_and_the_remedy_does_it(
        tmp_path: Path) -> None:
    etc = mail_web_dns(sysroot(tmp_path)) / "etc/firewalld"
    offline(etc, "--zone=public", "--add-service=cockpit")
    found = by_rule(firewall.audit(context(tmp_path, admin_sources=("192.0.2.0/24",))))
    admin = found["firewall.admin.public"]
    assert admin.status is Status.WARN
    assert admin.found == "zone public (default) opens cockpit (9090/tcp), ssh (22/tcp)"
    assert admin.remedy.startswith(
        "firewall-cmd --permanent --new-zone=admin && firewall-cmd --permanent --zone=admin "
        "--add-source=192.0.2.0/24 && firewall-cmd --permanent --zone=admin --add-service=ssh "
        "&& ")
    assert found["firewall.open.public"].status is Status.OK  # judged as management instead
    apply(etc, admin.remedy)
    after = by_rule(firewall.audit(context(tmp_path, admin_sources=("192.0.2.0/24",))))
    assert after["firewall.admin.public"].status is Status.OK
    assert after["firewall.admin.admin"].status is Status.OK
    assert after["firewall.admin.admin"].found.startswith("zone admin (192.0.2.0/24)")


def test_ssh_by_rich_rule_only_from_the_admin_network_passes_and_from_elsewhere_warns(
        tmp_path: Path) -> None:
    etc = sysroot(tmp_path) / "etc/firewalld"
    offline(etc, "--zone=public", "--remove-service-from-zone=ssh")
    rule = 'rule family="ipv4" source address="192.0.2.128/25" service name="ssh" accept'
    offline(etc, "--zone=public", f"--add-rich-rule={rule}")
    options = {"admin_sources": ("192.0.2.0/24",)}
    assert by_rule(firewall.audit(context(tmp_path, **options)))[
        "firewall.admin.public"].status is Status.OK
    offline(etc, "--zone=public", "--add-rich-rule=" + rule.replace("192.0.2.128/25",
                                                                     "198.51.100.0/24"))
    f = by_rule(firewall.audit(context(tmp_path, **options)))["firewall.admin.public"]
    assert f.status is Status.WARN and "198.51.100.0/24" in f.found
    assert "192.0.2.128/25" not in f.found


def test_a_zone_bound_by_networkmanager_to_the_admin_interface_is_the_admin_zone(
        tmp_path: Path) -> None:
    etc = sysroot(tmp_path) / "etc/firewalld"
    offline(etc, "--zone=public", "--remove-service-from-zone=ssh")
    offline(etc, "--zone=internal", "--add-service=cockpit")  # internal ships with ssh
    keyfile = tmp_path / "etc/NetworkManager/system-connections/mgmt.nmconnection"
    keyfile.parent.mkdir(parents=True)
    keyfile.write_text("[connection]\nid=mgmt\ntype=ethernet\ninterface-name=eth1\n"
                       "zone=internal\n\n[ipv4]\nmethod=manual\naddress1=192.0.2.10/24\n")
    found = by_rule(firewall.audit(context(tmp_path, admin_interfaces=("eth1",))))
    assert found["firewall.admin.internal"].status is Status.OK
    assert found["firewall.admin.internal"].found.startswith("zone internal (eth1)")
    assert found["firewall.admin.public"].status is Status.OK


def test_garbage_zone_xml_is_unknown_naming_the_file_and_other_zones_still_count(
        tmp_path: Path) -> None:
    etc = sysroot(tmp_path) / "etc/firewalld"
    offline(etc, "--zone=public", "--add-service=cockpit")
    (etc / "zones/broken.xml").write_text("<zone><service name='ssh'></zone")
    found = by_rule(firewall.audit(context(tmp_path)))
    assert found["firewall.config"].status is Status.UNKNOWN
    assert str(etc / "zones/broken.xml") in found["firewall.config"].found
    assert found["firewall.open.public"].status is Status.WARN


def test_firewalld_conf_that_is_a_directory_is_unknown_naming_it(tmp_path: Path) -> None:
    conf = sysroot(tmp_path) / "etc/firewalld/firewalld.conf"
    conf.unlink()
    conf.mkdir()
    found = by_rule(firewall.audit(context(tmp_path)))
    assert found["firewall.config"].status is Status.UNKNOWN
    assert str(conf) in found["firewall.config"].found
    assert not [r for r in found if r.startswith("firewall.open")]


def test_a_default_zone_without_a_zone_file_is_unknown(tmp_path: Path) -> None:
    sysroot(tmp_path, default="perimeter")
    f = by_rule(firewall.audit(context(tmp_path)))["firewall.config"]
    assert f.status is Status.UNKNOWN and "'perimeter' has no zone file" in f.found


def test_firewalld_not_enabled_at_boot_is_critical(tmp_path: Path) -> None:
    f = by_rule(firewall.audit(context(sysroot(tmp_path, units=("sshd",)))))
    assert f["firewall.enabled"].status is Status.CRIT
    assert f["firewall.enabled"].found == "firewalld.service not enabled"


def test_a_system_without_firewalld_is_critical_and_nothing_else_is_judged(
        tmp_path: Path) -> None:
    found = firewall.audit(context(tmp_path))
    assert [(f.rule, f.status, f.found) for f in found] == [
        ("firewall.enabled", Status.CRIT, "firewalld not installed")]


def test_garbage_from_firewall_cmd_is_unreadable_naming_the_command() -> None:
    with pytest.raises(Unreadable, match="firewall-cmd --zone=public --list-all"):
        firewall.parse_list_all("Traceback (most recent call last):\n  oops\n",
                                "firewall-cmd --zone=public --list-all")


def test_live_host_where_firewalld_is_not_running_is_critical() -> None:
    found = by_rule(firewall.audit(context(Path("/"))))
    if found["firewall.running"].ok:
        pytest.skip("firewalld is running on this host")
    assert found["firewall.running"].status is Status.CRIT
    assert found["firewall.running"].found.startswith("firewall-cmd --state: ")


# --- a real firewalld, in its own network and mount namespace ------------------------------

_DAEMON = """\
mount -t tmpfs tmpfs /run && mkdir /run/dbus && mount --bind "$0" /etc/firewalld || exit 1
ip link set lo up
dbus-daemon --system --nofork --nopidfile &
firewalld --nofork --nopid --log-target console &
wait
"""


@dataclass(frozen=True)
class LiveWithUnits(Context):
    """The live system, but with the fixture's enabled units (the host's are not an
    appliance's)."""

    units: frozenset[str] = frozenset()

    def enabled_units(self) -> frozenset[str]:
        return self.units


class InNamespaces(CommandRunner):
    """Runs every command inside the namespaces of process ``pid`` (where firewalld runs)."""

    def __init__(self, pid: int) -> None:
        super().__init__()
        self.pid = pid

    def run(self, argv: Sequence[str], *, timeout: float = 30.0,
            ok_codes: Sequence[int] = (0,), input: str | None = None) -> Completed:
        return super().run(["nsenter", "-t", str(self.pid), "-m", "-n", "--", *argv],
                           timeout=timeout, ok_codes=ok_codes, input=input)


@pytest.fixture
def running_firewalld(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon is not installed")
    root = mail_web_dns(sysroot(tmp_path))
    etc = root / "etc/firewalld"
    offline(etc, "--zone=public", "--add-service=cockpit")
    offline(etc, "--zone=public", "--add-port=8443/tcp")
    offline(etc, "--zone=public", "--add-forward-port=port=8080:proto=tcp:toport=80")
    offline(etc, "--zone=public", "--add-rich-rule=rule family=\"ipv4\" source "
            "address=\"10.0.0.0/8\" port port=\"3306\" protocol=\"tcp\" accept")
    offline(etc, "--new-zone=mgmt")
    offline(etc, "--zone=mgmt", "--add-source=192.0.2.0/24")
    offline(etc, "--zone=mgmt", "--add-interface=eth9")
    offline(etc, "--zone=mgmt", "--add-service=ssh", "--add-service=cockpit")
    # unshare stays in the new mount and network namespaces (nsenter's target); its child is
    # init of a new PID namespace, so when unshare ends (--kill-child) the kernel kills and
    # reaps dbus-daemon, firewalld and the polkitd D-Bus starts for it
    log = tmp_path / "daemons.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["unshare", "-m", "-n", "--propagation", "private", "--pid",
                                 "--fork", "--kill-child", "sh", "-c", _DAEMON, str(etc)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["nsenter", "-t", str(proc.pid), "-m", "-n", "firewall-cmd",
                              "--state"], capture_output=True, check=False).returncode:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"firewalld did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield root, proc.pid
    finally:
        proc.kill()  # unshare ignores SIGTERM while it waits for its child
        proc.wait(timeout=30)


def test_running_firewalld_is_read_through_firewall_cmd_and_judged_as_its_files(
        running_firewalld: tuple[Path, int]) -> None:
    root, pid = running_firewalld
    options = replace(AuditOptions(), admin_sources=("192.0.2.0/24",))
    files = Context(root, options, CommandRunner())
    live = LiveWithUnits(Path("/"), options, InNamespaces(pid), units=files.enabled_units())
    live_found = by_rule(firewall.audit(live))
    assert live_found["firewall.running"].status is Status.OK
    assert live_found["firewall.open.public"].source == "firewall-cmd --zone=public --list-all"
    files_found = by_rule(firewall.audit(files))
    zone_rules = sorted(r for r in files_found if r.split(".")[1] in ("open", "admin", "target"))
    assert zone_rules == sorted(r for r in live_found if r.split(".")[1] in
                                ("open", "admin", "target"))
    for rule in zone_rules:
        assert (live_found[rule].status, live_found[rule].found) == \
            (files_found[rule].status, files_found[rule].found), rule
    assert live_found["firewall.open.public"].status is Status.WARN
    assert "cockpit" not in live_found["firewall.open.public"].found  # management, see admin
    assert "forward-port port=8080:proto=tcp:toport=80" in \
        live_found["firewall.open.public"].found
    assert live_found["firewall.admin.public"].found.startswith(
        "zone public (default) opens cockpit (9090/tcp), ssh (22/tcp)")
    assert live_found["firewall.admin.mgmt"].status is Status.WARN  # eth9 is no admin port
