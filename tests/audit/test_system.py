"""The system rule family: crypto policy from fixture sysroots, real sockets (in this process,
and in a private network namespace for the well-known plaintext ports), real files with real
modes and owners, and the pending-updates hook."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.model import Status
from agent.system.commands import CommandRunner
from checks.audit import system
from checks.audit.base import Context, Finding
from checks.audit.options import AuditOptions
from tests.audit.fulltree import write

REPO = Path(__file__).resolve().parents[2]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, namespaces)")


def context(root: Path, **options: Any) -> Context:
    return Context(root, replace(AuditOptions(), **options), CommandRunner())


def by_rule(findings: list[Finding]) -> dict[str, Finding]:
    return {f.rule: f for f in findings}


def el9_accounts(root: Path) -> Path:
    write(root, "/etc/passwd", "root:x:0:0:root:/root:/bin/bash\n"
          "opendkim:x:990:990:OpenDKIM:/run/opendkim:/sbin/nologin\n")
    write(root, "/etc/group", "root:x:0:\nusers:x:100:\nshadow:x:42:\nopendkim:x:990:\n")
    return root


def apply(root: Path, remedy: str) -> None:
    """Run a remedy's chmod/chgrp/chown steps with the audited paths moved under ``root``."""
    for step in remedy.split(" && "):
        argv = shlex.split(step)
        assert argv[0] in ("chmod", "chgrp", "chown"), step
        moved = [str(root / a.lstrip("/")) if a.startswith("/") else a for a in argv]
        subprocess.run(moved, check=True)


# --- crypto policy -----------------------------------------------------------------------

@pytest.mark.parametrize(("policy", "ok"), [("DEFAULT", True), ("FUTURE", True),
                                            ("FIPS:OSPP", True), ("LEGACY", False),
                                            ("DEFAULT:SHA1", False), ("LEGACY:AD-SUPPORT", False)])
def test_crypto_policy_fails_only_when_legacy_or_sha1(tmp_path: Path, policy: str,
                                                      ok: bool) -> None:
    write(tmp_path, "/etc/crypto-policies/state/current", f"{policy}\n")
    f = by_rule(system.audit(context(tmp_path)))["system.crypto_policy"]
    assert (f.ok, f.found) == (ok, f"policy {policy}")
    assert f.source == "/etc/crypto-policies/state/current"
    if not ok:
        assert f.status is Status.WARN
        assert f.remedy.startswith("update-crypto-policies --set DEFAULT")


def test_crypto_policy_falls_back_to_the_config_file(tmp_path: Path) -> None:
    write(tmp_path, "/etc/crypto-policies/config", "# This file should contain a single "
          "keyword, the crypto policy to\n# be applied by default.\n\nLEGACY\n")
    f = by_rule(system.audit(context(tmp_path)))["system.crypto_policy"]
    assert f.status is Status.WARN and f.source == "/etc/crypto-policies/config"


def test_a_system_without_crypto_policies_gets_no_finding(tmp_path: Path) -> None:
    assert "system.crypto_policy" not in by_rule(system.audit(context(tmp_path)))


@pytest.mark.parametrize("broken", ["empty", "directory"])
def test_an_empty_or_directory_policy_state_is_unknown_naming_it(tmp_path: Path,
                                                                 broken: str) -> None:
    state = tmp_path / "etc/crypto-policies/state/current"
    if broken == "empty":
        write(tmp_path, "/etc/crypto-policies/state/current", "\n")
    else:
        state.mkdir(parents=True)
    f = by_rule(system.audit(context(tmp_path)))["system.crypto_policy"]
    assert f.status is Status.UNKNOWN and str(state) in f.found


# --- listening sockets (live) --------------------------------------------------------------

@contextmanager
def listening(address: str, port: int = 0, kind: int = socket.SOCK_STREAM) -> Iterator[int]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, port))
        if kind == socket.SOCK_STREAM:
            s.listen()
        yield s.getsockname()[1]


def live(**options: Any) -> dict[str, Finding]:
    return by_rule(system.audit(context(Path("/"), **options)))


def test_an_unexpected_port_on_all_addresses_names_our_program_until_it_closes() -> None:
    me = psutil.Process().name()
    with listening("0.0.0.0") as port:
        f = live()[f"system.listen.{port}-tcp"]
        assert f.status is Status.WARN
        assert f.found == f"{port}/tcp on 0.0.0.0 by {me} (pid {os.getpid()})"
        assert f'add "{port}/tcp" to allow_ports' in f.remedy
    assert f"system.listen.{port}-tcp" not in live()


def test_a_loopback_listener_is_never_reported() -> None:
    with listening("127.0.0.1") as port, listening("::1") as port6:
        found = live()
    assert f"system.listen.{port}-tcp" not in found
    assert f"system.listen.{port6}-tcp" not in found


def test_allow_ports_admits_a_listener_on_all_addresses() -> None:
    with listening("::") as port:
        assert f"system.listen.{port}-tcp" not in live(allow_ports=(f"{port - 1}-{port}/tcp",))


def test_a_udp_socket_bound_to_all_addresses_is_a_listener() -> None:
    for port in range(20000, 20100):  # below the ephemeral range, where clients' sockets are
        try:
            with listening("0.0.0.0", port, socket.SOCK_DGRAM):
                assert live()[f"system.listen.{port}-udp"].status is Status.WARN
            return
        except OSError:
            continue
    pytest.skip("no free UDP port in 20000-20099")


def test_an_image_sysroot_is_never_judged_by_the_hosts_sockets(tmp_path: Path) -> None:
    with listening("0.0.0.0"):
        found = by_rule(system.audit(context(tmp_path)))
    assert not [r for r in found if r.startswith(("system.listen", "system.plaintext"))]


_IN_NETNS = """\
import json, socket, sys
from pathlib import Path
from typing import Any
from agent.system.commands import CommandRunner
from checks.audit import system
from checks.audit.base import Context
from checks.audit.options import AuditOptions
socks = []
for family, kind, address, port in json.loads(sys.argv[1]):
    s = socket.socket(family, kind)
    s.bind((address, port))
    if kind == socket.SOCK_STREAM:
        s.listen()
    socks.append(s)
found = system.audit(Context(Path("/"), AuditOptions(), CommandRunner()))
print(json.dumps([[f.rule, f.status.name, f.found, f.remedy, f.rationale] for f in found]))
"""
# The child's name as psutil gives it: "python", "python3", "python3.11", whatever the
# interpreter's path is called (pytest itself may be "pytest"), then its pid.
_CHILD = r"\S+ \(pid \d+\)"


@needs_root
def test_plaintext_services_in_a_private_network_namespace() -> None:
    binds = [(socket.AF_INET, socket.SOCK_STREAM, "0.0.0.0", 23),
             (socket.AF_INET6, socket.SOCK_STREAM, "::", 143),
             (socket.AF_INET, socket.SOCK_DGRAM, "0.0.0.0", 69),
             (socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", 110),
             (socket.AF_INET, socket.SOCK_STREAM, "0.0.0.0", 25)]
    done = subprocess.run(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "-",
                           sys.executable, "-c", _IN_NETNS, json.dumps(binds)],
                          capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    found = {rule: (status, text, remedy, why)
             for rule, status, text, remedy, why in json.loads(done.stdout)}
    status, text, remedy, _ = found["system.plaintext.telnet"]
    assert status == "CRIT" and re.match(rf"23/tcp on 0\.0\.0\.0 by {_CHILD}$", text), text
    assert "use ssh/sftp instead" in remedy
    assert found["system.plaintext.tftp"][0] == "CRIT"
    status, text, remedy, why = found["system.plaintext.imap"]
    assert status == "WARN" and text.startswith("143/tcp on ::") and "ssl = required" in why
    assert "ssl = required" in remedy
    assert "system.plaintext.pop3" not in found  # IMAP/POP3 on loopback: webmail's, fine
    assert "system.plaintext" not in found
    assert found["system.listen"][0] == "OK"  # 25/tcp is the appliance's; nothing else open


@needs_root
def test_a_plaintext_login_service_on_loopback_is_found_and_not_once_closed() -> None:
    """Port 23 on 127.0.0.1 in a private network namespace (so it cannot collide with the
    host's): a telnet listener only local users reach is still WARN; closed, it is gone."""
    done = subprocess.run(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "-",
                           sys.executable, "-c", _IN_NETNS + _CLOSE_AND_AGAIN,
                           json.dumps([(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", 23)])],
                          capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    listening, closed = (dict((rule, (status, text)) for rule, status, text, *_ in json.loads(x))
                         for x in done.stdout.splitlines())
    status, text = listening["system.plaintext.telnet"]
    assert status == "WARN" and re.match(rf"23/tcp on 127\.0\.0\.1 by {_CHILD} \(loopback only\)$",
                                         text), text
    assert text.endswith("(loopback only)")
    assert "system.plaintext.telnet" not in closed and closed["system.plaintext"][0] == "OK"


_CLOSE_AND_AGAIN = """
for s in socks:
    s.close()
found = system.audit(Context(Path("/"), AuditOptions(), CommandRunner()))
print(json.dumps([[f.rule, f.status.name, f.found, f.remedy, f.rationale] for f in found]))
"""


# --- secrets -------------------------------------------------------------------------------

@needs_root
def test_shadow_as_el9_and_debian_ship_it_passes(tmp_path: Path) -> None:
    el9_accounts(tmp_path)
    write(tmp_path, "/etc/shadow", "root:!!:19000::::::\n", 0o000)
    write(tmp_path, "/etc/gshadow", "root:::\n", 0o640, group=42)  # Debian: root:shadow 0640
    f = by_rule(system.audit(context(tmp_path)))["system.shadow"]
    assert (f.status, f.found) == (Status.OK, "2 files, modes safe")


@needs_root
def test_world_readable_shadow_is_critical_and_the_remedy_fixes_it(tmp_path: Path) -> None:
    el9_accounts(tmp_path)
    write(tmp_path, "/etc/shadow", "root:!!:19000::::::\n", 0o644)
    write(tmp_path, "/etc/gshadow", "root:::\n", 0o640, group=100)
    f = by_rule(system.audit(context(tmp_path)))["system.shadow"]
    assert f.status is Status.CRIT
    assert f.found == ("/etc/shadow 0644 root:root is accessible to everyone; "
                       "/etc/gshadow 0640 root:users is readable by group users")
    assert f.remedy == ("chmod o-rwx /etc/shadow && chgrp root /etc/gshadow && "
                        "chmod 0000 /etc/gshadow")
    apply(tmp_path, f.remedy)
    assert by_rule(system.audit(context(tmp_path)))["system.shadow"].status is Status.OK


def test_shadow_that_is_a_directory_is_unknown_naming_it(tmp_path: Path) -> None:
    (tmp_path / "etc/shadow").mkdir(parents=True)
    f = by_rule(system.audit(context(tmp_path)))["system.shadow"]
    assert f.status is Status.UNKNOWN and str(tmp_path / "etc/shadow") in f.found


@needs_root
def test_dkim_keys_owned_by_opendkim_and_group_readable_pass(tmp_path: Path) -> None:
    el9_accounts(tmp_path)
    write(tmp_path, "/etc/opendkim/keys/example.com/mail.private", "KEY", 0o640, 990, 990)
    f = by_rule(system.audit(context(tmp_path)))["system.dkim_keys"]
    assert f.status is Status.OK


@needs_root
def test_world_readable_dkim_key_is_critical_unless_its_directory_is_closed(
        tmp_path: Path) -> None:
    el9_accounts(tmp_path)
    key = write(tmp_path, "/etc/opendkim/keys/example.com/mail.private", "KEY", 0o644, 990, 990)
    for d in (key.parent, key.parent.parent):
        d.chmod(0o755)
    f = by_rule(system.audit(context(tmp_path)))["system.dkim_keys"]
    assert f.status is Status.CRIT
    assert f.remedy == "chmod o-rwx /etc/opendkim/keys/example.com/mail.private"
    (tmp_path / "etc/opendkim/keys").chmod(0o750)
    f = by_rule(system.audit(context(tmp_path)))["system.dkim_keys"]
    assert f.status is Status.WARN
    assert "only the directory /etc/opendkim/keys keeps them out" in f.found


@needs_root
def test_a_key_behind_an_absolute_link_is_judged_inside_the_sysroot(tmp_path: Path) -> None:
    el9_accounts(tmp_path)
    write(tmp_path, "/etc/letsencrypt/archive/mail/privkey1.pem", "KEY", 0o644)
    (tmp_path / "etc/pki/tls/private").mkdir(parents=True)
    (tmp_path / "etc/pki/tls/private/mail.key").symlink_to(
        "/etc/letsencrypt/archive/mail/privkey1.pem")
    f = by_rule(system.audit(context(tmp_path)))["system.tls_keys"]
    assert f.status is Status.CRIT
    assert f.found == ("/etc/pki/tls/private/mail.key 0644 root:root is accessible to everyone; "
                       "/etc/letsencrypt/archive/mail/privkey1.pem 0644 root:root is accessible "
                       "to everyone")


@needs_root
def test_keys_named_in_the_keytable_are_checked_too(tmp_path: Path) -> None:
    el9_accounts(tmp_path)
    write(tmp_path, "/etc/opendkim/KeyTable", "# id domain:selector:key\n"
          "mail._domainkey.example.com example.com:mail:/srv/dkim/example.private\n")
    write(tmp_path, "/srv/dkim/example.private", "KEY", 0o660, 0, 990)
    f = by_rule(system.audit(context(tmp_path)))["system.dkim_keys"]
    assert f.status is Status.WARN
    assert f.found == "/srv/dkim/example.private 0660 root:opendkim is group-writable"
    assert f.remedy == "chmod g-w /srv/dkim/example.private"


def test_a_keytable_that_is_a_directory_is_unknown_naming_it(tmp_path: Path) -> None:
    (tmp_path / "etc/opendkim/KeyTable").mkdir(parents=True)
    f = by_rule(system.audit(context(tmp_path)))["system.dkim_keys"]
    assert f.status is Status.UNKNOWN and "etc/opendkim/KeyTable" in f.found


@needs_root
def test_tls_key_steward_config_and_site_secrets_must_not_be_world_readable(
        tmp_path: Path) -> None:
    el9_accounts(tmp_path)
    write(tmp_path, "/etc/pki/tls/private/localhost.key", "KEY", 0o600)
    write(tmp_path, "/etc/pki/tls/private/mail.example.com.key", "KEY", 0o644)
    write(tmp_path, "/etc/steward/steward.toml", "[notify.email]\npassword = 'x'\n", 0o644)
    write(tmp_path, "/etc/postfix/sasl_passwd", "[smtp.example.net] user:pw\n", 0o604)
    found = by_rule(system.audit(context(tmp_path, secret_files=("/etc/postfix/sasl_*",))))
    assert found["system.tls_keys"].status is Status.CRIT
    assert found["system.tls_keys"].found == \
        "/etc/pki/tls/private/mail.example.com.key 0644 root:root is accessible to everyone"
    assert found["system.steward_config"].status is Status.CRIT
    assert found["system.secret_files"].remedy == "chmod o-rwx /etc/postfix/sasl_passwd"
    for rule in ("system.tls_keys", "system.steward_config", "system.secret_files"):
        apply(tmp_path, found[rule].remedy)
    again = by_rule(system.audit(context(tmp_path, secret_files=("/etc/postfix/sasl_*",))))
    assert {again[r].status for r in ("system.tls_keys", "system.steward_config",
                                      "system.secret_files")} == {Status.OK}


def test_no_secrets_of_a_kind_means_no_finding_for_it(tmp_path: Path) -> None:
    found = by_rule(system.audit(context(tmp_path)))
    assert not [r for r in found if r in ("system.dkim_keys", "system.tls_keys",
                                          "system.steward_config", "system.secret_files")]


# --- pending security updates (hook for steward's patch state) ------------------------------

def test_pending_security_updates_are_reported_from_the_patch_state(tmp_path: Path) -> None:
    write(tmp_path, system.PENDING, json.dumps({"security": 3, "checked": time.time()}))
    f = by_rule(system.audit(context(tmp_path)))["system.security_updates"]
    assert f.status is Status.WARN and f.found.startswith("3 security updates pending")
    write(tmp_path, system.PENDING, json.dumps({"security": 0, "checked": time.time()}))
    assert by_rule(system.audit(context(tmp_path)))["system.security_updates"].ok


def test_garbage_patch_state_is_unknown_naming_it(tmp_path: Path) -> None:
    write(tmp_path, system.PENDING, "{not json")
    f = by_rule(system.audit(context(tmp_path)))["system.security_updates"]
    assert f.status is Status.UNKNOWN and "var/lib/steward/patch/pending.json" in f.found


def test_no_patch_state_means_no_update_finding(tmp_path: Path) -> None:
    assert "system.security_updates" not in by_rule(system.audit(context(tmp_path)))


def test_the_live_host_is_judged_without_unknowns() -> None:
    found = live()
    assert not [f for f in found.values() if f.status is Status.UNKNOWN], found
