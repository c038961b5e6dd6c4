"""The Dovecot rule family against test trees read by the real doveconf (Debian's dovecot-core
package), and once more through the file-parsing fallback used when doveconf is missing."""

from __future__ import annotations

import re
import shutil
from functools import partial
from pathlib import Path

import pytest

from agent.model import Status
from agent.system.commands import CommandRunner
from checks.audit import dovecot
from checks.audit.base import TOOL_PATH, Context
from checks.audit.options import AuditOptions
from tests.audit.helpers import NoTools, findings, pass_every_rule

DOVECONF = shutil.which("doveconf", path=TOOL_PATH)
needs_doveconf = pytest.mark.skipif(DOVECONF is None, reason="doveconf is not installed "
                                    "(apt-get install dovecot-core)")

MAIN = "protocols = imap pop3 lmtp\nlisten = *\n!include conf.d/*.conf\n!include_try local.conf\n"
SSL = {"ssl": "required", "ssl_cert": "</etc/pki/dovecot/certs/dovecot.pem",
       "ssl_key": "</etc/pki/dovecot/private/dovecot.pem", "ssl_min_protocol": "TLSv1.2"}
AUTH = {"disable_plaintext_auth": "yes", "auth_mechanisms": "plain login"}


def make(root: Path, ssl: dict[str, str | None] | None = None,
         auth: dict[str, str | None] | None = None, extra: str = "") -> Path:
    """A sysroot with /etc/dovecot laid out as on EL9 plus the TLS files; ``ssl`` and ``auth``
    edit 10-ssl.conf and 10-auth.conf (None deletes a setting), ``extra`` ends dovecot.conf."""
    conf = root / "etc/dovecot"
    (conf / "conf.d").mkdir(parents=True, exist_ok=True)
    (conf / "dovecot.conf").write_text(MAIN + extra)
    for name, base, edits in (("10-ssl.conf", SSL, ssl), ("10-auth.conf", AUTH, auth)):
        values = {**base, **(edits or {})}
        (conf / "conf.d" / name).write_text("".join(
            f"{k} = {v}\n" for k, v in values.items() if v is not None))
    for f in ("etc/pki/dovecot/certs/dovecot.pem", "etc/pki/dovecot/private/dovecot.pem"):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("-----BEGIN DUMMY-----\n")
    return root


audit = partial(findings, dovecot.audit)  # (root, fallback=False) -> {rule: Finding}


def apply(remedy: str, root: Path) -> None:
    """Make the edits a remedy describes: replace the named lines, or append to the file."""
    for setting, places in re.findall(r"set `([^`]*)` in (.*?)(?= and set |, then )", remedy):
        for place in places.split(", "):
            path, _, line = place.partition(" line ")
            f = root / path.lstrip("/")
            lines = f.read_text().splitlines() if f.exists() else []
            if line:
                indent = re.match(r"\s*", lines[int(line) - 1])[0]  # type: ignore[index]
                lines[int(line) - 1] = indent + setting
            else:
                lines.append(setting)
            f.write_text("\n".join(lines) + "\n")


@needs_doveconf
def test_a_hardened_configuration_passes_every_rule_with_every_field_filled(tmp_path):
    pass_every_rule(audit(make(tmp_path)), dovecot.RULES,
                    f"{DOVECONF} -c {tmp_path}/etc/dovecot/dovecot.conf")


POP3_YES = "protocol pop3 {\n  ssl = yes\n}\n"
IMAP_TLS1 = "protocol imap {\n  ssl_min_protocol = TLSv1\n}\n"
CASES = [
    # rule, 10-ssl.conf edits, 10-auth.conf edits, dovecot.conf tail, status, found, remedy
    ("dovecot.ssl", {"ssl": "yes"}, {}, "", Status.WARN, "ssl = yes",
     "set `ssl = required` in /etc/dovecot/conf.d/10-ssl.conf line 1, then systemctl reload "
     "dovecot"),
    ("dovecot.ssl", {"ssl": "no"}, {}, "", Status.CRIT, "ssl = no", "ssl = required"),
    ("dovecot.ssl", {}, {}, POP3_YES, Status.WARN, "ssl = required (pop3: yes)",
     "in /etc/dovecot/dovecot.conf line 6, /etc/dovecot/conf.d/10-ssl.conf line 1, then"),
    ("dovecot.ssl", {"ssl": None}, {}, "", Status.WARN, "ssl = yes",
     "set `ssl = required` in /etc/dovecot/conf.d/10-ssl.conf, then"),
    ("dovecot.cleartext_auth", {}, {"disable_plaintext_auth": "no"}, "", Status.WARN,
     "disable_plaintext_auth = no", "set `disable_plaintext_auth = yes` in "
     "/etc/dovecot/conf.d/10-auth.conf line 1"),
    ("dovecot.cleartext_auth", {"ssl": "yes"}, {"disable_plaintext_auth": "no"}, "",
     Status.CRIT, "disable_plaintext_auth = no", "disable_plaintext_auth = yes"),
    ("dovecot.cleartext_auth", {}, {"disable_plaintext_auth": None}, "", Status.OK,
     "disable_plaintext_auth = yes", ""),
    ("dovecot.ssl_min_protocol", {"ssl_min_protocol": "TLSv1.3"}, {}, "", Status.OK,
     "TLSv1.3", ""),
    ("dovecot.ssl_min_protocol", {"ssl_min_protocol": "TLSv1.1"}, {}, "", Status.WARN,
     "ssl_min_protocol = TLSv1.1", "set `ssl_min_protocol = TLSv1.2` in "
     "/etc/dovecot/conf.d/10-ssl.conf line 4"),
    ("dovecot.ssl_min_protocol", {"ssl_min_protocol": "SSLv3"}, {}, "", Status.CRIT,
     "= SSLv3", "TLSv1.2"),
    ("dovecot.ssl_min_protocol", {"ssl_min_protocol": "ANY"}, {}, "", Status.CRIT, "= ANY",
     "TLSv1.2"),
    ("dovecot.ssl_min_protocol", {}, {}, IMAP_TLS1, Status.WARN,
     "ssl_min_protocol = TLSv1.2 (imap: TLSv1)", "/etc/dovecot/dovecot.conf line 6"),
    ("dovecot.ssl_min_protocol", {"ssl_min_protocol": "TLSv9"}, {}, "", Status.UNKNOWN,
     "TLSv9: not a protocol", "TLSv1.2"),
    ("dovecot.ssl_min_protocol", {"ssl": "no", "ssl_min_protocol": "TLSv1"}, {}, "",
     Status.OK, "ssl = no", ""),
    ("dovecot.ssl_cert", {"ssl_key": "</etc/pki/dovecot/private/gone.pem"}, {}, "",
     Status.CRIT, "ssl_key: /etc/pki/dovecot/private/gone.pem missing",
     "and set `ssl_key = </etc/pki/dovecot/private/dovecot.pem` in "
     "/etc/dovecot/conf.d/10-ssl.conf line 3, then systemctl reload dovecot"),
    ("dovecot.ssl_cert", {"ssl_cert": None}, {}, "", Status.CRIT, "ssl_cert not set",
     "set `ssl_cert = </etc/pki/dovecot/certs/dovecot.pem` in "
     "/etc/dovecot/conf.d/10-ssl.conf and"),
    ("dovecot.ssl_cert", {"ssl": "no", "ssl_cert": None, "ssl_key": None}, {}, "", Status.OK,
     "no certificate needed", ""),
]


@needs_doveconf
@pytest.mark.parametrize(("rule", "ssl", "auth", "extra", "status", "found", "remedy"), CASES)
def test_each_rule_passes_or_fails_naming_the_file_and_line_that_fixes_it(
        tmp_path, rule, ssl, auth, extra, status, found, remedy):
    f = audit(make(tmp_path, ssl, auth, extra))[rule]
    assert f.status is status, f
    assert found in f.found
    assert remedy in f.remedy
    if status not in (Status.OK, Status.UNKNOWN):
        apply(f.remedy, tmp_path)
        assert audit(tmp_path)[rule].status is Status.OK


@needs_doveconf
def test_plaintext_ssl_yes_is_a_warning_that_explains_ports_143_and_110(tmp_path):
    f = audit(make(tmp_path, {"ssl": "yes"}))["dovecot.ssl"]
    assert (f.status, f.found, f.expected) == (Status.WARN, "ssl = yes", "ssl = required")
    assert "143" in f.rationale and "110" in f.rationale


@needs_doveconf
def test_protocols_that_are_not_enabled_are_not_judged(tmp_path):
    f = audit(make(tmp_path, extra="protocol submission {\n  ssl = no\n}\n"))["dovecot.ssl"]
    assert f.status is Status.OK


@needs_doveconf
@pytest.mark.parametrize(("broken", "says"), [
    ("bogus line", "dovecot.conf line 5: Expecting '{'"),
    ("protocol imap {\n  ssl = yes\n", "Missing '}'"),
    ("!include missing.conf", "dovecot.conf line 5: No matches"),
])
def test_a_config_doveconf_rejects_is_unknown_naming_doveconf_and_the_file(tmp_path, broken,
                                                                           says):
    found = dovecot.audit(Context(make(tmp_path, extra=broken + "\n"), AuditOptions(),
                                  CommandRunner()))
    assert [f.rule for f in found] == [r.rule for r in dovecot.RULES]
    for f in found:
        assert f.status is Status.UNKNOWN
        assert f.found.startswith(f"{DOVECONF} -c {tmp_path}/etc/dovecot/dovecot.conf")
        assert says in f.found


@pytest.mark.parametrize("fallback", [False, True])
def test_a_directory_where_dovecot_conf_belongs_is_unknown(tmp_path, fallback):
    if not fallback and DOVECONF is None:
        pytest.skip("doveconf is not installed")
    (tmp_path / "etc/dovecot/dovecot.conf").mkdir(parents=True)
    found = audit(tmp_path, fallback)
    assert {f.status for f in found.values()} == {Status.UNKNOWN}
    assert all(f.found == f"{tmp_path}/etc/dovecot/dovecot.conf: Is a directory"
               for f in found.values())


def test_no_dovecot_in_the_audited_system_gives_no_findings(tmp_path):
    (tmp_path / "etc").mkdir()
    assert dovecot.audit(Context(tmp_path, AuditOptions(), CommandRunner())) == []
    assert dovecot.audit(NoTools(tmp_path, AuditOptions(), CommandRunner())) == []


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[4].name}")
def test_without_doveconf_the_files_are_parsed_to_the_same_verdicts(tmp_path, case):
    _, ssl, auth, extra, *_ = case
    by_files = audit(make(tmp_path, ssl, auth, extra), fallback=True)
    assert all("doveconf not installed" in f.source for f in by_files.values())
    if DOVECONF is None:
        pytest.skip("doveconf is not installed: nothing to compare with")
    by_tool = audit(tmp_path)
    assert {r: (f.status, f.found, f.remedy) for r, f in by_files.items()} == \
        {r: (f.status, f.found, f.remedy) for r, f in by_tool.items()}


def test_without_doveconf_an_absolute_include_is_read_inside_the_sysroot(tmp_path):
    make(tmp_path, extra="!include /etc/dovecot/site.conf\n!include_try /etc/dovecot/s*.conf\n")
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv/site.conf").write_text("protocol pop3 {\n  ssl = yes\n}\n")
    (tmp_path / "etc/dovecot/site.conf").symlink_to("/srv/site.conf")
    assert audit(tmp_path, fallback=True)["dovecot.ssl"].found == "ssl = required (pop3: yes)"


@pytest.mark.parametrize(("broken", "says"), [
    ("bogus line", "dovecot.conf line 5: expecting '=' or '{'"),
    ("protocol imap {\n  ssl = yes\n", "dovecot.conf: missing '}'"),
    ("!include missing.conf", "missing.conf: no such file"),
])
def test_without_doveconf_a_broken_config_is_unknown_naming_the_file(tmp_path, broken, says):
    found = audit(make(tmp_path, extra=broken + "\n"), fallback=True)
    assert {f.status for f in found.values()} == {Status.UNKNOWN}
    assert all(says in f.found for f in found.values())
