"""The Postfix rule family against test trees read by the real postconf (Debian's postfix
package), and once more through the file-parsing fallback used when postconf is missing."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from functools import partial
from pathlib import Path

import pytest

from agent.model import Status
from agent.system.commands import CommandRunner
from checks.audit import postfix
from checks.audit.base import TOOL_PATH, Context
from checks.audit.options import AuditOptions
from tests.audit.helpers import NoTools, findings, pass_every_rule

POSTCONF = shutil.which("postconf", path=TOOL_PATH)
needs_postconf = pytest.mark.skipif(POSTCONF is None, reason="postconf is not installed "
                                    "(apt-get install postfix)")

MAIN = {
    "compatibility_level": "3.6",
    "myhostname": "mx1.example.com",
    "alias_maps": "hash:/etc/aliases",
    "disable_vrfy_command": "yes",
    "smtpd_helo_required": "yes",
    "smtpd_helo_restrictions": "permit_mynetworks, reject_invalid_helo_hostname,\n"
                               "    reject_non_fqdn_helo_hostname",
    "smtpd_banner": "$myhostname ESMTP",
    "smtpd_tls_security_level": "may",
    "smtpd_tls_cert_file": "/etc/pki/tls/certs/postfix.pem",
    "smtpd_tls_key_file": "/etc/pki/tls/private/postfix.key",
    "smtpd_tls_protocols": ">=TLSv1.2",
    "smtpd_tls_mandatory_protocols": "!SSLv2, !SSLv3, !TLSv1, !TLSv1.1",
    "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, "
                                "reject_unauth_destination",
}
SMTP = "smtp      inet  n       -       n       -       -       smtpd\n"
SUBMISSION = """\
submission inet n       -       n       -       -       smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_auth_only=yes
  -o smtpd_sasl_auth_enable=yes
"""
REST = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
local     unix  -       n       n       -       -       local
"""
ALIASES = "# comment\npostmaster:\troot\nroot:\n  admin@example.com\n"


def make(root: Path, main: dict[str, str | None] | None = None, master: str | None = None,
         aliases: str | None = ALIASES) -> Path:
    """A sysroot with /etc/postfix, /etc/aliases and the TLS files; ``main`` edits MAIN
    (None deletes a parameter)."""
    conf = root / "etc/postfix"
    conf.mkdir(parents=True, exist_ok=True)
    values = {**MAIN, **(main or {})}
    (conf / "main.cf").write_text("# test\n" + "".join(
        f"{k} = {v}\n" for k, v in values.items() if v is not None))
    (conf / "master.cf").write_text(SMTP + SUBMISSION + REST if master is None else master)
    if aliases is not None:
        (root / "etc/aliases").write_text(aliases)
    for f in ("etc/pki/tls/certs/postfix.pem", "etc/pki/tls/private/postfix.key"):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("-----BEGIN DUMMY-----\n")
    return settled(root)


def settled(root: Path) -> Path:
    """Backdate the files: postconf waits until a main.cf changed within the last second is
    a second old (it may still be being written), which would slow every test down."""
    for f in (root / "etc/postfix").iterdir():
        os.utime(f, (f.stat().st_atime - 10, f.stat().st_mtime - 10))
    return root


audit = partial(findings, postfix.audit)  # (root, fallback=False) -> {rule: Finding}


def apply(remedy: str, root: Path) -> None:
    """Run a postconf remedy against the test tree instead of /etc/postfix (no reload)."""
    cmd = remedy.replace(" && systemctl reload postfix", "")
    cmd = cmd.replace("postconf ", f"{POSTCONF} -c {shlex.quote(str(root / 'etc/postfix'))} ")
    subprocess.run(cmd, shell=True, check=True, capture_output=True)
    settled(root)


@needs_postconf
def test_a_hardened_configuration_passes_every_rule_with_every_field_filled(tmp_path):
    pass_every_rule(audit(make(tmp_path)), postfix.RULES, f"{POSTCONF} -c {tmp_path}/etc/postfix")


WITH_SMTP = SUBMISSION + REST  # master.cf without the port 25 line, to prepend one
CASES = [
    # rule, main.cf edits, master.cf, status, words in found, words in remedy
    ("postfix.vrfy", {"disable_vrfy_command": None}, None, Status.WARN,
     "disable_vrfy_command = no", "postconf -e disable_vrfy_command=yes && systemctl reload"),
    ("postfix.vrfy", {}, SMTP.strip() + " -o disable_vrfy_command=no\n" + WITH_SMTP,
     Status.WARN, "= no", "postconf -P smtp/inet/disable_vrfy_command=yes"),
    ("postfix.helo_required", {"smtpd_helo_required": "no"}, None, Status.WARN,
     "smtpd_helo_required = no", "postconf -e smtpd_helo_required=yes"),
    ("postfix.helo_checks", {"smtpd_helo_restrictions": "reject_invalid_helo_hostname"}, None,
     Status.WARN, "reject_non_fqdn_helo_hostname not reached",
     "smtpd_helo_restrictions=reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname"),
    ("postfix.helo_checks", {"smtpd_helo_restrictions": "permit, reject_invalid_helo_hostname, "
                             "reject_non_fqdn_helo_hostname"}, None, Status.WARN,
     "not reached", "reject_non_fqdn_helo_hostname, permit'"),
    ("postfix.helo_checks", {}, SMTP.strip() + " -o smtpd_helo_restrictions=\n" + WITH_SMTP,
     Status.WARN, "not reached", "postconf -P smtp/inet/smtpd_helo_restrictions=permit_mynet"),
    ("postfix.helo_checks", {"smtpd_helo_restrictions": None, "smtpd_recipient_restrictions":
                             "reject_invalid_helo_hostname reject_non_fqdn_helo_hostname"},
     None, Status.OK, "both reached", ""),
    ("postfix.helo_checks", {"smtpd_helo_restrictions": None, "smtpd_client_restrictions":
                             "reject_invalid_helo_hostname reject_non_fqdn_helo_hostname"},
     None, Status.OK, "both reached", ""),
    ("postfix.helo_checks", {"smtpd_helo_restrictions": None, "smtpd_delay_reject": "no",
                             "smtpd_client_restrictions":
                             "reject_invalid_helo_hostname reject_non_fqdn_helo_hostname"},
     None, Status.WARN, "not reached", "permit_mynetworks, permit_sasl_authenticated, reject_"),
    ("postfix.banner", {"smtpd_banner": "$myhostname ESMTP $mail_name ($mail_version)"}, None,
     Status.WARN, "mx1.example.com ESMTP Postfix (", "'smtpd_banner=$myhostname ESMTP'"),
    ("postfix.banner", {"smtpd_banner": "$myhostname ESMTP Postfix 3.5.9"}, None, Status.WARN,
     "3.5.9", "postconf -e"),
    ("postfix.banner", {"smtpd_banner": "$myhostname ESMTP ready"}, None, Status.OK,
     "mx1.example.com ESMTP ready", ""),
    ("postfix.tls_inbound", {"smtpd_tls_security_level": "none"}, None, Status.CRIT,
     "= none", "postconf -e smtpd_tls_security_level=may"),
    ("postfix.tls_inbound", {"smtpd_tls_security_level": None}, None, Status.CRIT,
     "= none", "smtpd_tls_security_level=may"),
    ("postfix.tls_inbound", {"smtpd_tls_security_level": "encrypt"}, None, Status.WARN,
     "= encrypt", "smtpd_tls_security_level=may"),
    ("postfix.tls_inbound", {"smtpd_tls_security_level": None, "smtpd_use_tls": "yes"}, None,
     Status.OK, "= may", ""),
    ("postfix.tls_cert", {"smtpd_tls_cert_file": None, "smtpd_tls_key_file": None}, None,
     Status.CRIT, "smtpd_tls_cert_file, _key_file = , ", "smtpd_tls_cert_file=/etc/pki/tls/certs/"),
    ("postfix.tls_cert", {"smtpd_tls_key_file": "/etc/pki/tls/private/gone.key"}, None,
     Status.CRIT, "missing: /etc/pki/tls/private/gone.key", "postconf -e"),
    ("postfix.tls_cert", {"smtpd_tls_cert_file": None, "smtpd_tls_key_file": None,
                          "smtpd_tls_chain_files": "/etc/pki/tls/private/postfix.key, "
                                                   "/etc/pki/tls/certs/postfix.pem"},
     None, Status.OK, "smtpd_tls_chain_files", ""),
    ("postfix.submission", {}, SMTP + REST, Status.WARN, "no submission service",
     'postconf -M submission/inet="submission inet n - n - - smtpd" && postconf -P '
     "submission/inet/smtpd_tls_security_level=encrypt"),
    ("postfix.submission", {}, SMTP + SUBMISSION.replace("encrypt", "may") + REST, Status.CRIT,
     "submission/inet: smtpd_tls_security_level = may",
     "postconf -P submission/inet/smtpd_tls_security_level=encrypt &&"),
    ("postfix.submission", {"smtpd_tls_auth_only": "yes"},
     SMTP + SUBMISSION.replace("  -o smtpd_tls_auth_only=yes\n", "") + REST, Status.OK,
     "require TLS", ""),
    ("postfix.submission", {}, SMTP + "submission inet n - n - - smtpd\n" + REST,
     Status.CRIT, "smtpd_tls_security_level = may, smtpd_tls_auth_only = no",
     "submission/inet/smtpd_tls_auth_only=yes"),
    ("postfix.submission", {}, SMTP + "465 inet n - n - - smtpd -o smtpd_tls_wrappermode=yes\n"
     + REST, Status.OK, "465/inet require TLS", ""),
    ("postfix.submission", {}, SMTP + "smtps inet n - n - - smtpd\n" + REST, Status.CRIT,
     "smtps/inet: smtpd_tls_wrappermode = no", "smtps/inet/smtpd_tls_wrappermode=yes"),
    ("postfix.smtp_auth", {"smtpd_sasl_auth_enable": "yes"}, None, Status.CRIT,
     "smtpd_sasl_auth_enable = yes, smtpd_tls_auth_only = no",
     "postconf -e smtpd_tls_auth_only=yes"),
    ("postfix.smtp_auth", {"smtpd_sasl_auth_enable": "yes", "smtpd_tls_auth_only": "yes"},
     None, Status.OK, "smtpd_tls_auth_only = yes", ""),
    ("postfix.tls_protocols", {"smtpd_tls_protocols": None,
                               "smtpd_tls_mandatory_protocols": None}, None, Status.WARN,
     "allows TLSv1, TLSv1.1", "'smtpd_tls_protocols=!SSLv2, !SSLv3, !TLSv1, !TLSv1.1'"),
    ("postfix.tls_protocols", {"smtpd_tls_protocols": "!SSLv2"}, None, Status.CRIT,
     "smtpd_tls_protocols = !SSLv2 allows SSLv3, TLSv1, TLSv1.1", "postconf -e"),
    ("postfix.tls_protocols", {"smtpd_tls_protocols": "TLSv1.2 TLSv1.3"}, None, Status.OK,
     "only TLSv1.2", ""),
    ("postfix.tls_protocols", {}, SMTP + SUBMISSION + " -o smtpd_tls_mandatory_protocols=TLSv1"
     "\n" + REST, Status.WARN, "submission/inet: smtpd_tls_mandatory_protocols = TLSv1 allows",
     "postconf -P 'submission/inet/smtpd_tls_mandatory_protocols=!SSLv2,!SSLv3,!TLSv1,"),
    ("postfix.relay", {"smtpd_relay_restrictions": "permit"}, None, Status.CRIT,
     "open relay on smtp/inet, submission/inet", "'smtpd_relay_restrictions=permit_mynetworks,"),
    ("postfix.relay", {"smtpd_relay_restrictions": "permit_mynetworks, permit, "
                       "reject_unauth_destination"}, None, Status.CRIT, "open relay", ""),
    ("postfix.relay", {"smtpd_relay_restrictions": None, "smtpd_recipient_restrictions":
                       "permit_mynetworks, reject_unauth_destination"}, None, Status.OK, "", ""),
    ("postfix.relay", {"mynetworks": "0.0.0.0/0"}, None, Status.CRIT,
     "mynetworks = 0.0.0.0/0", "'mynetworks=127.0.0.0/8 [::1]/128' "),
    ("postfix.relay", {"smtpd_relay_restrictions": "permit_sasl_authenticated, "
                       "defer_unauth_destination"}, None, Status.OK, "", ""),
]


@needs_postconf
@pytest.mark.parametrize(("rule", "main", "master", "status", "found", "remedy"), CASES)
def test_each_rule_passes_or_fails_with_the_postconf_command_that_fixes_it(
        tmp_path, rule, main, master, status, found, remedy):
    f = audit(make(tmp_path, main, master))[rule]
    assert f.status is status, f
    assert found in f.found
    assert remedy in f.remedy
    if status is not Status.OK and rule != "postfix.tls_cert":
        apply(f.remedy, tmp_path)
        assert audit(tmp_path)[rule].status is Status.OK


@needs_postconf
def test_vrfy_enabled_is_a_warning_with_the_postconf_command(tmp_path):
    f = audit(make(tmp_path, {"disable_vrfy_command": "no"}))["postfix.vrfy"]
    assert (f.status, f.found) == (Status.WARN, "disable_vrfy_command = no")
    assert f.remedy == "postconf -e disable_vrfy_command=yes && systemctl reload postfix"
    assert f.result().remedy == f.remedy and "VRFY" in f.result().details


@needs_postconf
def test_requiring_tls_on_port_25_explains_that_it_breaks_delivery(tmp_path):
    f = audit(make(tmp_path, {"smtpd_tls_security_level": "encrypt"}))["postfix.tls_inbound"]
    assert "cannot deliver here" in f.found and "RFC 3207" in f.found


@needs_postconf
def test_port_25_behind_postscreen_is_judged_on_the_smtpd_pass_service(tmp_path):
    master = ("smtp inet n - n - 1 postscreen\nsmtpd pass - - n - - smtpd\n"
              "  -o { smtpd_banner = $myhostname ESMTP $mail_version }\n" + SUBMISSION + REST)
    f = audit(make(tmp_path, {}, master))["postfix.banner"]
    assert f.status is Status.WARN and f.found.startswith("smtpd_banner = mx1.example.com ESMTP")
    assert f.remedy == "postconf -PX smtpd/pass/smtpd_banner && postconf -e " \
        "'smtpd_banner=$myhostname ESMTP' && systemctl reload postfix"
    apply(f.remedy, tmp_path)
    assert audit(tmp_path)["postfix.banner"].status is Status.OK


ALIAS_CASES = [
    ("postfix.postmaster", "root: admin@example.com\n", Status.WARN, "postmaster -> mailbox:"
     "postmaster", 'echo "postmaster: root" >> /etc/aliases && newaliases'),
    ("postfix.root_alias", "postmaster: root\n", Status.WARN, "root -> mailbox:root",
     'echo "root: admin@example.com" >> /etc/aliases && newaliases'),
    ("postfix.root_alias", "postmaster: root\nroot: /dev/null\n", Status.WARN,
     "root -> /dev/null", 'change the "root:" entry in /etc/aliases to "root: admin@example.com"'
     ", then newaliases"),  # postalias keeps the first entry: appending one changes nothing
    ("postfix.postmaster", "postmaster: /dev/null\nroot: x@example.org\n", Status.WARN,
     "postmaster -> /dev/null", 'change the "postmaster:" entry in /etc/aliases to '
     '"postmaster: root"'),
    ("postfix.root_alias", "postmaster: root\nroot: \\root, alice\n", Status.OK,
     "root -> mailbox:root, mailbox:alice", ""),
    ("postfix.postmaster", "postmaster: hostmaster\nhostmaster: x@example.org\nroot: x\n",
     Status.OK, "postmaster -> x@example.org", ""),
    ("postfix.root_alias", "", Status.WARN, "root -> mailbox:root", "newaliases"),
]


@needs_postconf
@pytest.mark.parametrize(("rule", "aliases", "status", "found", "remedy"), ALIAS_CASES)
def test_postmaster_and_root_must_be_aliased_to_someone_who_reads_mail(
        tmp_path, rule, aliases, status, found, remedy):
    f = audit(make(tmp_path, aliases=aliases))[rule]
    assert (f.status, f.severity) == (status, Status.WARN)
    assert found in f.found and remedy in f.remedy


@needs_postconf
def test_a_certificate_behind_an_absolute_link_is_found_inside_the_sysroot(tmp_path):
    make(tmp_path, {"smtpd_tls_cert_file": "/etc/pki/tls/cert.pem"})  # EL9: a link to the bundle
    bundle = tmp_path / "etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem"
    bundle.parent.mkdir(parents=True)
    bundle.write_text("-----BEGIN DUMMY-----\n")
    (tmp_path / "etc/pki/tls/cert.pem").symlink_to("/etc/pki/ca-trust/extracted/pem/"
                                                   "tls-ca-bundle.pem")
    assert audit(tmp_path)["postfix.tls_cert"].status is Status.OK
    bundle.unlink()
    assert "missing: /etc/pki/tls/cert.pem" in audit(tmp_path)["postfix.tls_cert"].found


@needs_postconf
def test_roots_forward_file_counts_as_an_alias(tmp_path):
    make(tmp_path, aliases="postmaster: root\n")
    (tmp_path / "root").mkdir()
    (tmp_path / "root/.forward").write_text("admin@example.com\n")
    f = audit(tmp_path)["postfix.root_alias"]
    assert f.status is Status.OK and "/root/.forward: admin@example.com" in f.found


@needs_postconf
def test_aliases_in_a_map_the_audit_cannot_read_make_the_rule_unknown(tmp_path):
    make(tmp_path, {"alias_maps": "hash:/etc/aliases, ldap:/etc/postfix/ldap-aliases.cf"},
         aliases="postmaster: root\n")
    f = audit(tmp_path)["postfix.root_alias"]
    assert f.status is Status.UNKNOWN and "ldap:/etc/postfix/ldap-aliases.cf" in f.found


@needs_postconf
def test_an_aliases_directory_makes_only_the_alias_rules_unknown(tmp_path):
    make(tmp_path, aliases=None)
    (tmp_path / "etc/aliases").mkdir()
    found = audit(tmp_path)
    for rule in ("postfix.postmaster", "postfix.root_alias"):
        assert found[rule].status is Status.UNKNOWN
        assert f"{tmp_path}/etc/aliases: Is a directory" in found[rule].found
    assert found["postfix.vrfy"].status is Status.OK


@needs_postconf
@pytest.mark.parametrize(("broken", "says"), [
    ("main.cf", "main.cf, line 2: missing '=' after attribute name"),
    ("dir", "main.cf: Is a directory"),
    ("master.cf", "master.cf: line 1: bad field count"),
])
def test_a_broken_configuration_is_unknown_naming_postconf_and_the_file(tmp_path, broken,
                                                                        says):
    make(tmp_path)
    conf = tmp_path / "etc/postfix"
    if broken == "main.cf":
        (conf / "main.cf").write_text("# broken\nthis is no setting\n")
    elif broken == "dir":
        (conf / "main.cf").unlink()
        (conf / "main.cf").mkdir()
    else:
        (conf / "master.cf").write_text("smtp inet n - n smtpd\n")
    settled(tmp_path)
    found = postfix.audit(Context(tmp_path, AuditOptions(), CommandRunner()))
    assert [f.rule for f in found] == [r.rule for r in postfix.RULES]
    for f in found:
        assert f.status is Status.UNKNOWN
        assert f.found.startswith(f"{POSTCONF} -c {conf}") and says in f.found


def test_no_postfix_in_the_audited_system_gives_no_findings(tmp_path):
    (tmp_path / "etc").mkdir()
    assert postfix.audit(Context(tmp_path, AuditOptions(), CommandRunner())) == []
    assert postfix.audit(NoTools(tmp_path, AuditOptions(), CommandRunner())) == []


FALLBACK_CASES = [({}, None), ({"disable_vrfy_command": "no", "smtpd_relay_restrictions":
                                "permit", "smtpd_tls_protocols": None}, None),
                  ({"smtpd_banner": "${myhostname} ESMTP $mail_name $mail_version",
                    "smtpd_tls_security_level": None}, SMTP + REST),
                  ({}, SMTP.strip() + " -o smtpd_helo_required=no\n" + WITH_SMTP)]


@pytest.mark.parametrize(("main", "master"), FALLBACK_CASES)
def test_without_postconf_main_cf_and_master_cf_are_parsed_to_the_same_verdicts(
        tmp_path, main, master):
    by_files = audit(make(tmp_path, main, master), fallback=True)
    assert all("postconf not installed" in f.source for f in by_files.values())
    if POSTCONF is None:
        pytest.skip("postconf is not installed: nothing to compare with")
    by_tool = audit(tmp_path)
    assert {r: f.status for r, f in by_files.items()} == \
        {r: f.status for r, f in by_tool.items()}


def test_without_postconf_a_broken_main_cf_is_unknown_naming_the_file(tmp_path):
    make(tmp_path)
    (tmp_path / "etc/postfix/main.cf").write_text("no equals sign\n")
    found = audit(tmp_path, fallback=True)
    assert {f.status for f in found.values()} == {Status.UNKNOWN}
    assert all(f.found.startswith(f"{tmp_path}/etc/postfix/main.cf: missing '='")
               for f in found.values())


def test_protocol_lists_are_read_as_postfix_reads_them():
    assert postfix.allowed_protocols(">=TLSv1.2") == ["TLSv1.2", "TLSv1.3"]
    assert postfix.allowed_protocols("!SSLv2, !SSLv3, !TLSv1, !TLSv1.1") == \
        ["TLSv1.2", "TLSv1.3"]
    assert postfix.allowed_protocols("") == list(postfix.PROTOCOLS)
    assert postfix.allowed_protocols("tlsv1.2:TLSv1.3") == ["TLSv1.2", "TLSv1.3"]
    assert postfix.allowed_protocols(">=TLSv1 <=TLSv1.2 !TLSv1.1") == ["TLSv1", "TLSv1.2"]

