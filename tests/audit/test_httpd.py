"""httpd rules on EL9- and Debian-shaped configuration trees in tmp_path (no tool needed: httpd
has none that prints these directives, so the family reads the files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.model import Status
from agent.system.commands import CommandRunner
from checks.audit import httpd
from checks.audit.base import Context, Finding
from checks.audit.options import AuditOptions

HARDENED = "ServerTokens Prod\nServerSignature Off\nTraceEnable Off\n"
SSL_VHOST = """Listen 443 https
<VirtualHost _default_:443>
    ServerName www.example.test
    SSLEngine on
{}
</VirtualHost>
"""


def el9_tree(root: Path, server: str = HARDENED, vhost: str = "", **conf_d: str) -> Path:
    """httpd.conf as EL9 ships it (modules from conf.modules.d, sites from conf.d), with
    ``server`` lines in conf.d/00-test.conf and ``vhost`` lines inside ssl.conf's vhost."""
    etc = root / "etc/httpd"
    for d in ("conf", "conf.d", "conf.modules.d"):
        (etc / d).mkdir(parents=True)
    (etc / "conf/httpd.conf").write_text(
        'ServerRoot "/etc/httpd"\nListen 80\nInclude conf.modules.d/*.conf\nUser apache\n'
        '<Directory />\n    AllowOverride none\n    Require all denied\n'
        '    ServerSignature On\n</Directory>\n'
        '<IfModule mime_module>\n    TypesConfig /etc/mime.types\n</IfModule>\n'
        "# ServerTokens Prod\n"
        "IncludeOptional conf.d/*.conf\n")
    (etc / "conf.modules.d/00-base.conf").write_text(
        "LoadModule mime_module modules/mod_mime.so\n")
    (etc / "conf.modules.d/00-ssl.conf").write_text(
        "LoadModule ssl_module modules/mod_ssl.so\n")
    (etc / "conf.d/00-test.conf").write_text(server)
    (etc / "conf.d/ssl.conf").write_text(SSL_VHOST.format(vhost))
    for name, text in conf_d.items():
        (etc / "conf.d" / f"{name}.conf").write_text(text)
    return root


def run(root: Path) -> dict[str, Finding]:
    ctx = Context(root, AuditOptions(), CommandRunner())
    return {f.rule: f for f in httpd.audit(ctx)}


def test_hardened_tree_passes_every_rule(tmp_path):
    found = run(el9_tree(tmp_path))
    assert sorted(found) == sorted(httpd._TITLES)
    assert {r: f.status for r, f in found.items()} == dict.fromkeys(found, Status.OK)


# rule -> (server-level lines that pass it, lines that fail it); "" leaves httpd's default
SERVER_LEVEL = {
    "httpd.server_tokens": (
        ["ServerTokens Prod", "servertokens productonly",
         "ServerTokens Full\nServerTokens Prod",  # the last one wins
         "ServerTokens \\\n    Prod",  # a continued line
         "<IfModule ssl_module>\nServerTokens Prod\n</IfModule>",
         "<IfModule mod_ssl.c>\nServerTokens Prod\n</IfModule>",
         "<IfDefine !HARDEN>\nServerTokens Prod\n</IfDefine>",
         "Define HARDEN\n<IfDefine HARDEN>\nServerTokens Prod\n</IfDefine>"],
        ["",  # Full
         "ServerTokens OS", "ServerTokens Full", "# ServerTokens Prod",
         "<IfModule !mod_ssl.c>\nServerTokens Prod\n</IfModule>",
         "<IfModule mod_nothing.c>\nServerTokens Prod\n</IfModule>",
         "<IfDefine HARDEN>\nServerTokens Prod\n</IfDefine>"]),
    "httpd.server_signature": (["", "ServerSignature Off"],  # "": Off
                               ["ServerSignature On", "ServerSignature EMail"]),
    "httpd.trace_enable": (["TraceEnable Off"],
                           ["", "TraceEnable On", "TraceEnable extended"]),  # "": On
    "httpd.ssl_protocol": (
        ["",  # EL9: the crypto policy, TLS 1.2 or later
         "SSLProtocol -all +TLSv1.2 +TLSv1.3", "SSLProtocol all -SSLv3 -TLSv1 -TLSv1.1",
         "SSLProtocol TLSv1.2", "SSLProtocol +TLSv1.2 +TLSv1.3",
         "SSLProtocol TLSv1 +TLSv1.2 -TLSv1"],
        ["SSLProtocol all -SSLv3", "SSLProtocol all", "SSLProtocol -all +TLSv1.1 +TLSv1.2",
         "SSLProtocol +TLSv1.2 TLSv1"]),  # a bare name starts over
}


@pytest.mark.parametrize(("server", "rule", "ok"), [
    (server, rule, ok) for rule, verdicts in SERVER_LEVEL.items()
    for ok, lines in zip((True, False), verdicts) for server in lines])
def test_each_server_level_rule_passes_and_fails(tmp_path, server, rule, ok):
    # The other rules' hardened lines, so only ``rule`` is under test.
    directive = {"httpd.server_tokens": "ServerTokens", "httpd.server_signature":
                 "ServerSignature", "httpd.trace_enable": "TraceEnable"}.get(rule, "-")
    others = "".join(x + "\n" for x in HARDENED.splitlines() if not x.startswith(directive))
    found = run(el9_tree(tmp_path, others + server + "\n"))
    assert found[rule].ok is ok, found[rule]
    assert found[rule].status == (Status.OK if ok else Status.WARN)
    assert all(f.ok for r, f in found.items() if r != rule), found


@pytest.mark.parametrize(("vhost", "rule"), [
    ("    ServerSignature On", "httpd.server_signature"),
    ("    TraceEnable extended", "httpd.trace_enable"),
    ("    SSLProtocol all -SSLv3", "httpd.ssl_protocol"),
])
def test_a_virtual_host_that_weakens_a_setting_is_named_by_file_and_line(tmp_path, vhost, rule):
    found = run(el9_tree(tmp_path, vhost=vhost))
    assert found[rule].ok is False
    where = "/etc/httpd/conf.d/ssl.conf:5 (in <VirtualHost _default_:443> at " \
            "/etc/httpd/conf.d/ssl.conf:2)"
    assert where in found[rule].found
    assert f"change {where} to" in found[rule].remedy
    assert found[rule].remedy.endswith("apachectl configtest && systemctl reload httpd")


def test_a_virtual_host_that_sets_the_safe_value_passes(tmp_path):
    found = run(el9_tree(tmp_path, vhost="    SSLProtocol -all +TLSv1.3\n    TraceEnable Off"))
    assert found["httpd.ssl_protocol"].ok is True
    assert found["httpd.trace_enable"].ok is True


def test_weak_protocols_are_listed(tmp_path):
    found = run(el9_tree(tmp_path, HARDENED + "SSLProtocol all -SSLv3\n"))
    assert found["httpd.ssl_protocol"].found == (
        "SSLProtocol all -SSLv3 (/etc/httpd/conf.d/00-test.conf:4) allows TLSv1, TLSv1.1")


def test_an_unknown_protocol_makes_only_that_rule_unknown(tmp_path):
    found = run(el9_tree(tmp_path, vhost="    SSLProtocol +TLSv9"))
    assert found["httpd.ssl_protocol"].ok is None
    assert "ssl.conf:5" in found["httpd.ssl_protocol"].found
    assert all(f.ok for r, f in found.items() if r != "httpd.ssl_protocol")


def test_directives_inside_directory_sections_are_not_server_level(tmp_path):
    # httpd.conf's <Directory /> carries "ServerSignature On": per-directory, not judged.
    assert run(el9_tree(tmp_path))["httpd.server_signature"].ok is True


def test_remedy_adds_a_missing_directive_to_httpd_conf(tmp_path):
    found = run(el9_tree(tmp_path, "ServerSignature Off\n"))
    assert found["httpd.server_tokens"].remedy == (
        'add "ServerTokens Prod" to /etc/httpd/conf/httpd.conf (outside any <VirtualHost>), '
        "then apachectl configtest && systemctl reload httpd")
    assert found["httpd.server_tokens"].found == "not set (httpd's default: Full)"


def test_remedy_changes_the_line_that_sets_the_value(tmp_path):
    found = run(el9_tree(tmp_path, "ServerTokens OS\n"))
    assert found["httpd.server_tokens"].remedy.startswith(
        'change /etc/httpd/conf.d/00-test.conf:1 to "ServerTokens Prod"')


def test_includes_follow_server_root_directories_and_absolute_symlinks(tmp_path):
    tree = el9_tree(tmp_path, "Include extra\n")
    (tree / "etc/httpd/extra/sub").mkdir(parents=True)
    (tree / "etc/httpd/extra/sub/b.conf").write_text("TraceEnable Off\n")
    (tree / "etc/httpd/extra/a.conf").write_text("ServerTokens Prod\n")
    (tree / "srv").mkdir()
    (tree / "srv/site.conf").write_text("ServerSignature On\n")
    (tree / "etc/httpd/conf.d/site.conf").symlink_to("/srv/site.conf")  # inside the sysroot
    found = run(tree)
    assert found["httpd.server_tokens"].ok is True
    assert found["httpd.trace_enable"].ok is True
    assert found["httpd.server_signature"].ok is False
    assert "/etc/httpd/conf.d/site.conf:1" in found["httpd.server_signature"].found


@pytest.mark.parametrize(("text", "where", "problem"), [
    ("<VirtualHost *:80>\nServerName x\n", "/etc/httpd/conf.d/zz-bad.conf:1",
     "<VirtualHost> is never closed"),
    ("<IfModule ssl_module>\n</VirtualHost>\n", "/etc/httpd/conf.d/zz-bad.conf:2",
     "</VirtualHost> closes <IfModule> of line 1"),
    ("\n\nInclude conf.d/missing.conf\n", "/etc/httpd/conf.d/zz-bad.conf:3",
     "Include /etc/httpd/conf.d/missing.conf: no such file"),
    ("Include nothing/*.conf\n", "/etc/httpd/conf.d/zz-bad.conf:1",
     "Include /etc/httpd/nothing/*.conf: no such file"),
])
def test_a_broken_configuration_is_unknown_naming_file_and_line(tmp_path, text, where, problem):
    found = run(el9_tree(tmp_path, **{"zz-bad": text}))
    assert sorted(found) == sorted(httpd._TITLES)
    for f in found.values():
        assert f.status == Status.UNKNOWN
        assert f.found == f"{where}: {problem}"


def test_include_optional_may_match_nothing(tmp_path):
    found = run(el9_tree(tmp_path, HARDENED + "IncludeOptional nothing/*.conf\n"
                         "IncludeOptional /etc/none.conf\n"))
    assert all(f.ok for f in found.values())


def test_debian_apache2_layout_is_read_with_its_own_reload_command(tmp_path):
    etc = tmp_path / "etc/apache2"
    for d in ("conf-available", "conf-enabled", "sites-available", "sites-enabled"):
        (etc / d).mkdir(parents=True)
    (etc / "apache2.conf").write_text(
        "# ServerRoot \"/etc/apache2\"\nIncludeOptional mods-enabled/*.load\n"
        "IncludeOptional conf-enabled/*.conf\nIncludeOptional sites-enabled/*.conf\n")
    (etc / "conf-available/security.conf").write_text(
        "ServerTokens OS\nServerSignature On\nTraceEnable Off\n")
    (etc / "conf-enabled/security.conf").symlink_to("../conf-available/security.conf")
    found = run(tmp_path)
    assert found["httpd.server_tokens"].ok is False
    assert found["httpd.server_tokens"].remedy == (
        'change /etc/apache2/conf-enabled/security.conf:1 to "ServerTokens Prod", '
        "then apache2ctl configtest && systemctl reload apache2")
    assert found["httpd.server_signature"].ok is False
    assert found["httpd.trace_enable"].ok is True


def test_no_httpd_configuration_means_no_findings(tmp_path):
    assert httpd.audit(Context(tmp_path, AuditOptions(), CommandRunner())) == []


def test_protocols_read_plus_minus_and_bare_names_as_mod_ssl_does():
    assert httpd.protocols(("all", "-SSLv3", "-TLSv1", "-TLSv1.1")) == {"TLSv1.2", "TLSv1.3"}
    assert httpd.protocols(("-all", "+TLSv1.3")) == {"TLSv1.3"}
    assert httpd.protocols(("+TLSv1.2", "SSLv2", "tlsv1.3")) == {"TLSv1.3"}
    with pytest.raises(ValueError, match="unknown protocol"):
        httpd.protocols(("",))
    with pytest.raises(ValueError, match="unknown protocol"):
        httpd.protocols(("TLSv9",))
