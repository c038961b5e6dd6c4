"""sshd rules against the real ``sshd -T`` on EL9-shaped configuration trees in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.model import Status
from agent.system.commands import CommandRunner
from checks.audit import sshd
from checks.audit.base import Context, Finding
from checks.audit.options import AuditOptions

_PROBE = Context(Path("/"), AuditOptions(), CommandRunner())
pytestmark = pytest.mark.skipif(
    not (_PROBE.tool("sshd") and _PROBE.tool("ssh-keygen")),
    reason="needs sshd and ssh-keygen (Debian: apt-get install openssh-server)")

# Every rule passing, as a hardened EL9 box would have it in its first drop-in.
HARDENED = ("PermitRootLogin prohibit-password", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PermitEmptyPasswords no", "X11Forwarding no")


@pytest.fixture(scope="module", autouse=True)
def privsep_dir():
    """sshd -T run as root insists on its privilege separation directory; Debian's sshd has it
    at /run/sshd, which ssh.service creates at start (EL9's /usr/share/empty.sshd is packaged)."""
    if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
        os.makedirs("/run/sshd", mode=0o755)


def el9_tree(root: Path, *dropin: str, main_extra: str = "", include: bool = True) -> Path:
    """sshd_config as EL9 ships it (drop-ins first, crypto policy through an absolute
    symlink), with ``dropin`` lines in sshd_config.d/00-test.conf."""
    ssh = root / "etc/ssh"
    (ssh / "sshd_config.d").mkdir(parents=True)
    (ssh / "sshd_config").write_text(
        ("Include /etc/ssh/sshd_config.d/*.conf\n" if include else "")
        + "#PermitRootLogin prohibit-password\nAuthorizedKeysFile .ssh/authorized_keys\n"
        "Subsystem sftp /usr/libexec/openssh/sftp-server\n" + main_extra)
    (ssh / "sshd_config.d/50-redhat.conf").write_text(
        "Include /etc/crypto-policies/back-ends/opensshserver.config\n"
        "SyslogFacility AUTHPRIV\nChallengeResponseAuthentication no\nUsePAM yes\n"
        "X11Forwarding yes\nPrintMotd no\n")
    policy = root / "usr/share/crypto-policies/DEFAULT"
    policy.mkdir(parents=True)
    (policy / "opensshserver.txt").write_text("Ciphers aes256-gcm@openssh.com,chacha20-poly1305"
                                              "@openssh.com\n")
    backends = root / "etc/crypto-policies/back-ends"
    backends.mkdir(parents=True)
    (backends / "opensshserver.config").symlink_to(
        "/usr/share/crypto-policies/DEFAULT/opensshserver.txt")
    if dropin:
        (ssh / "sshd_config.d/00-test.conf").write_text("\n".join(dropin) + "\n")
    return root


def run(root: Path, **options: object) -> dict[str, Finding]:
    ctx = Context(root, AuditOptions(**options), CommandRunner())
    return {f.rule: f for f in sshd.audit(ctx)}


def test_hardened_tree_passes_every_rule(tmp_path):
    found = run(el9_tree(tmp_path, *HARDENED))
    assert sorted(found) == sorted(sshd._RULES)
    assert {r: f.status for r, f in found.items()} == dict.fromkeys(found, Status.OK)
    assert all(f.result().remedy == "" for f in found.values())


@pytest.mark.parametrize(("line", "rule", "ok", "severity"), [
    ("PermitRootLogin yes", "sshd.root_login", False, Status.WARN),
    ("PermitRootLogin prohibit-password", "sshd.root_login", True, Status.WARN),
    ("PermitRootLogin without-password", "sshd.root_login", True, Status.WARN),
    ("PermitRootLogin forced-commands-only", "sshd.root_login", True, Status.WARN),
    ("PermitRootLogin no", "sshd.root_login", True, Status.WARN),
    ("PasswordAuthentication yes", "sshd.password_auth", False, Status.WARN),
    ("PasswordAuthentication no", "sshd.password_auth", True, Status.WARN),
    ("KbdInteractiveAuthentication yes", "sshd.kbd_interactive", False, Status.WARN),
    ("ChallengeResponseAuthentication yes", "sshd.kbd_interactive", False, Status.WARN),
    ("KbdInteractiveAuthentication no", "sshd.kbd_interactive", True, Status.WARN),
    ("PermitEmptyPasswords yes", "sshd.empty_passwords", False, Status.CRIT),
    ("PermitEmptyPasswords no", "sshd.empty_passwords", True, Status.CRIT),
    ("X11Forwarding yes", "sshd.x11_forwarding", False, Status.WARN),
    ("X11Forwarding no", "sshd.x11_forwarding", True, Status.WARN),
])
def test_each_rule_judges_the_first_value_sshd_reads(tmp_path, line, rule, ok, severity):
    # The line under test comes first, so it wins over HARDENED (sshd keeps the first value).
    found = run(el9_tree(tmp_path, line, *HARDENED))
    assert found[rule].ok is ok, found[rule]
    assert found[rule].status == (Status.OK if ok else severity)
    others = [f for r, f in found.items() if r != rule]
    assert all(f.ok for f in others), others


def test_el9_defaults_allow_passwords_and_x11_but_keep_root_to_keys(tmp_path):
    found = run(el9_tree(tmp_path))
    assert found["sshd.root_login"].ok is True
    assert found["sshd.root_login"].found == "PermitRootLogin prohibit-password"
    assert found["sshd.password_auth"].ok is False
    assert found["sshd.kbd_interactive"].ok is True  # 50-redhat.conf turns it off
    assert found["sshd.x11_forwarding"].ok is False  # 50-redhat.conf turns it on


def test_keyboard_interactive_without_pam_asks_for_no_password(tmp_path):
    found = run(el9_tree(tmp_path, "UsePAM no", "KbdInteractiveAuthentication yes"))
    assert found["sshd.kbd_interactive"].ok is True
    assert "UsePAM no" in found["sshd.kbd_interactive"].found


@pytest.mark.parametrize(("policy", "line", "ok"), [
    ("no", "PermitRootLogin prohibit-password", False),
    ("no", "PermitRootLogin no", True),
    ("forced-commands-only", "PermitRootLogin prohibit-password", False),
    ("forced-commands-only", "PermitRootLogin forced-commands-only", True),
    ("prohibit-password", "PermitRootLogin yes", False),
])
def test_root_login_is_judged_against_the_ssh_root_login_policy(tmp_path, policy, line, ok):
    found = run(el9_tree(tmp_path, line, *HARDENED), ssh_root_login=policy)
    assert found["sshd.root_login"].ok is ok
    if not ok:
        assert f'"PermitRootLogin {policy}"' in found["sshd.root_login"].remedy


def test_root_login_with_passwords_is_critical(tmp_path):
    found = run(el9_tree(tmp_path, "PermitRootLogin yes", "PasswordAuthentication yes"))
    assert found["sshd.root_login"].status == Status.CRIT


def test_ssh_passwords_policy_allows_password_logins(tmp_path):
    tree = el9_tree(tmp_path, "PasswordAuthentication yes", "KbdInteractiveAuthentication yes")
    assert run(tree)["sshd.password_auth"].ok is False
    found = run(tree, ssh_passwords=True)
    assert found["sshd.password_auth"].ok is True
    assert found["sshd.kbd_interactive"].ok is True


def test_a_key_demanded_before_the_password_makes_password_logins_acceptable(tmp_path):
    found = run(el9_tree(tmp_path, "PasswordAuthentication yes",
                         "AuthenticationMethods publickey,password publickey,keyboard-interactive",
                         "KbdInteractiveAuthentication yes"))
    assert found["sshd.password_auth"].ok is True
    assert "demands a key" in found["sshd.password_auth"].found
    assert found["sshd.kbd_interactive"].ok is True


def test_drop_ins_and_crypto_policy_are_read_below_the_sysroot_not_on_the_host(tmp_path):
    ctx = Context(el9_tree(tmp_path, "PermitRootLogin no"), AuditOptions(), CommandRunner())
    values = sshd.effective(ctx)
    assert values["permitrootlogin"] == "no"
    # The absolute symlink /etc/crypto-policies/... is followed inside the sysroot.
    assert values["ciphers"] == "aes256-gcm@openssh.com,chacha20-poly1305@openssh.com"


def test_a_later_line_in_sshd_config_does_not_override_the_drop_in(tmp_path):
    found = run(el9_tree(tmp_path, *HARDENED, main_extra="PermitRootLogin yes\n"))
    assert found["sshd.root_login"].ok is True


def test_a_match_block_in_a_drop_in_ends_with_its_file(tmp_path):
    # Were the copies pasted into one file, the Match would swallow 50-redhat.conf's lines.
    found = run(el9_tree(tmp_path, "Match User backup", "X11Forwarding no"))
    assert found["sshd.x11_forwarding"].found == "X11Forwarding yes"


def test_remedy_names_the_drop_in_that_sshd_reads_first(tmp_path):
    found = run(el9_tree(tmp_path, "PasswordAuthentication yes"))
    remedy = found["sshd.password_auth"].remedy
    assert '"PasswordAuthentication no" to /etc/ssh/sshd_config.d/01-steward.conf' in remedy
    assert remedy.endswith("then sshd -t && systemctl reload sshd")


def test_remedy_names_sshd_config_when_it_does_not_include_the_drop_ins_first(tmp_path):
    found = run(el9_tree(tmp_path, include=False))
    assert '"PasswordAuthentication no" in /etc/ssh/sshd_config above' in \
        found["sshd.password_auth"].remedy


def test_a_broken_drop_in_makes_every_rule_unknown_naming_the_file(tmp_path):
    tree = el9_tree(tmp_path, *HARDENED)
    (tree / "etc/ssh/sshd_config.d/10-bad.conf").write_text("\nPermitRootLogin maybe\n")
    found = run(tree)
    assert sorted(found) == sorted(sshd._RULES)
    for f in found.values():
        assert f.ok is None and f.status == Status.UNKNOWN
        assert "/etc/ssh/sshd_config.d/10-bad.conf line 2" in f.found, f.found
        assert "steward-sshd-" not in f.found
        assert f.result().summary.startswith(f"{f.title}: cannot tell:")


def test_an_unreadable_include_is_unknown_not_a_traceback(tmp_path):
    tree = el9_tree(tmp_path, *HARDENED)
    (tree / "etc/ssh/sshd_config.d/20-loop.conf").write_text(
        "Include /etc/ssh/sshd_config.d/20-loop.conf\n")
    found = run(tree)
    assert all(f.ok is None for f in found.values())
    assert "nested too deeply" in found["sshd.root_login"].found


def test_no_sshd_config_means_no_findings(tmp_path):
    assert sshd.audit(Context(tmp_path, AuditOptions(), CommandRunner())) == []


def test_a_missing_sshd_binary_is_unknown(tmp_path, monkeypatch):
    ctx = Context(el9_tree(tmp_path), AuditOptions(), CommandRunner())
    monkeypatch.setattr(Context, "tool", lambda self, name: None)
    found = sshd.audit(ctx)
    assert found and all(f.ok is None and "not installed" in f.found for f in found)
