"""BIND rules against the real ``named-checkconf -p -t <tree>`` on named.conf trees in
tmp_path."""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
from pathlib import Path

import pytest

from agent.model import Status
from agent.system.commands import CommandRunner
from checks.audit import bind
from checks.audit.base import Context, Finding
from checks.audit.options import AuditOptions

_TOOL = Context(Path("/"), AuditOptions(), CommandRunner()).tool("named-checkconf")
pytestmark = [
    pytest.mark.skipif(not _TOOL, reason="needs named-checkconf (Debian: bind9-utils)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="named-checkconf -t chroots: needs root"),
]

HARDENED = 'version "none";\n\tallow-transfer { none; };\n\trecursion no;'
ZONE = 'zone "example.test" IN {{ type primary; file "example.test.zone"; {} }};\n'


def modern() -> bool:
    """Whether this named-checkconf is BIND 9.20 or later (no zone transfers by default)."""
    out = subprocess.run([_TOOL or "named-checkconf", "-v"], capture_output=True, text=True,
                         check=False).stdout
    m = re.match(r"(\d+)\.(\d+)", out)
    return bool(m) and (int(m[1]), int(m[2])) >= (9, 20)


def tree(root: Path, options: str = HARDENED, zone: str = "", extra: str = "",
         conf: str = "etc/named.conf") -> Path:
    """named.conf as on EL9 (its zones in an include), with ``options`` inside options { },
    ``zone`` inside example.test's zone { } and ``extra`` statements after them."""
    (root / conf).parent.mkdir(parents=True, exist_ok=True)
    (root / "var/named").mkdir(parents=True, exist_ok=True)
    (root / conf).write_text(f'options {{\n\tdirectory "/var/named";\n\t{options}\n}};\n'
                             f'include "/etc/named.zones";\n{extra}')
    # With views, every zone must be in one: the views then bring their own.
    (root / "etc/named.zones").write_text("" if "view" in extra else
        'zone "localhost" IN { type primary; file "named.localhost"; };\n' + ZONE.format(zone))
    return root


def run(root: Path) -> dict[str, Finding]:
    return {f.rule: f for f in bind.audit(Context(root, AuditOptions(), CommandRunner()))}


def test_hardened_configuration_passes_every_rule(tmp_path):
    found = run(tree(tmp_path))
    assert sorted(found) == sorted(bind._TITLES)
    assert {r: f.status for r, f in found.items()} == dict.fromkeys(found, Status.OK)
    assert found["bind.version"].source == f"{_TOOL} -p -t {tmp_path} /etc/named.conf"


@pytest.mark.parametrize(("line", "ok"), [
    ("", False),
    ('version "none";', True),
    ("version none;", True),
    ('version "go away";', True),
    ('version "";', True),
    ('version "9.18.28-1~deb12u2-Debian";', False),
    ('version "BIND 9.16.23-RH";', False),
])
def test_version_must_be_hidden(tmp_path, line, ok):
    options = HARDENED.replace('version "none";', line)
    found = run(tree(tmp_path, options))
    assert found["bind.version"].ok is ok
    assert found["bind.version"].status == (Status.OK if ok else Status.WARN)
    assert found["bind.allow_transfer"].ok and found["bind.recursion"].ok


@pytest.mark.parametrize(("options", "zone", "extra", "ok"), [
    ("allow-transfer { none; };", "", "", True),
    ("allow-transfer { any; };", "", "", False),
    ("allow-transfer { none; };", "allow-transfer { any; };", "", False),
    ("allow-transfer { any; };", "allow-transfer { 192.0.2.53; };", "", True),
    ("allow-transfer { none; };", "allow-transfer { 0.0.0.0/0; };", "", False),
    ("allow-transfer { none; };", "allow-transfer { !10.0.0.0/8; any; };", "", False),
    ("allow-transfer { none; };", "allow-transfer { !any; 192.0.2.53; };", "", True),
    ("allow-transfer { none; };", "allow-transfer { ! { 10.0.0.0/8; }; any; };", "", False),
    ("allow-transfer { none; };", 'allow-transfer { key "xfer"; };',
     'key "xfer" { algorithm hmac-sha256; secret "c2VjcmV0c2VjcmV0"; };\n', True),
    ("allow-transfer { secondaries; };", "", "acl secondaries { 192.0.2.53; any; };\n", False),
    ("allow-transfer { secondaries; };", "", "acl secondaries { 192.0.2.53; };\n", True),
    ("allow-transfer port 53 { any; };", "", "", False),
])
def test_zone_transfers_must_be_restricted(tmp_path, options, zone, extra, ok):
    found = run(tree(tmp_path, f'version "none"; recursion no; {options}', zone, extra))
    assert found["bind.allow_transfer"].ok is ok, found["bind.allow_transfer"]
    if not ok:
        assert found["bind.allow_transfer"].found.startswith("anyone may transfer example.test")
        assert found["bind.allow_transfer"].status == Status.WARN


def test_zone_transfers_default_to_anyone_before_bind_9_20(tmp_path):
    found = run(tree(tmp_path, 'version "none"; recursion no;'))
    assert found["bind.allow_transfer"].ok is modern()
    if not modern():
        assert "example.test (allow-transfer not set" in found["bind.allow_transfer"].found
        assert "localhost" not in found["bind.allow_transfer"].found  # a built-in zone


@pytest.mark.parametrize(("options", "ok", "status"), [
    ("recursion no; allow-recursion { any; };", True, Status.OK),
    ("", True, Status.OK),  # recursion yes by default; allow-recursion localnets, localhost
    ("recursion yes;", True, Status.OK),
    ("allow-recursion { localnets; localhost; };", True, Status.OK),
    ("allow-recursion { any; };", False, Status.CRIT),
    ("allow-recursion { 0.0.0.0/0; };", False, Status.CRIT),
    ("allow-recursion { ::/0; };", False, Status.CRIT),
    ("allow-query { any; };", False, Status.CRIT),  # inherited by recursion and cache
    ("allow-query { any; }; allow-recursion { localnets; };", True, Status.OK),
    ("allow-query-cache { any; };", False, Status.CRIT),  # inherited by allow-recursion
    ("allow-query-cache { any; }; allow-recursion { localhost; };", False, Status.WARN),
    ("allow-recursion { trusted; };", False, Status.CRIT),
])
def test_recursion_must_not_be_open_to_strangers(tmp_path, options, ok, status):
    found = run(tree(tmp_path, f'version "none"; allow-transfer {{ none; }}; {options}',
                     extra="acl trusted { 10.0.0.0/8; any; };\n"))
    assert found["bind.recursion"].ok is ok, found["bind.recursion"]
    assert found["bind.recursion"].status == status


VIEWS = """view "inside" {{
\tmatch-clients {{ localnets; 10.0.0.0/8; }};
\t{inside}
\tzone "example.test" {{ type primary; file "example.test.zone"; }};
}};
view "outside" {{
\t{outside}
\tzone "example.test" {{ type primary; file "example.test.zone"; }};
}};
"""


@pytest.mark.parametrize(("rule", "options", "inside", "outside", "ok"), [
    ("bind.recursion", "", "recursion yes; allow-recursion { any; };", "recursion no;", True),
    ("bind.recursion", "", "recursion no;", "recursion yes; allow-recursion { any; };", False),
    ("bind.recursion", "", "allow-query { any; };", "recursion no;", True),
    ("bind.allow_transfer", "recursion no;", "allow-transfer { any; };",
     "allow-transfer { none; };", True),
    ("bind.allow_transfer", "recursion no;", "allow-transfer { none; };",
     "allow-transfer { any; };", False),
])
def test_only_the_view_a_stranger_lands_in_is_judged(tmp_path, rule, options, inside, outside,
                                                     ok):
    found = run(tree(tmp_path, f'version "none"; {options}',
                     extra=VIEWS.format(inside=inside, outside=outside)))[rule]
    assert found.ok is ok
    if not ok:
        assert "in view outside" in found.found


@pytest.mark.parametrize(("zones", "problem"), [
    ('zone "bad" { type primary file "x"; };\n', "/etc/named.zones:3: missing ';' before 'file'"),
    ('zone "bad" { type primary; };\n', "/etc/named.zones:3: zone 'bad': missing 'file' entry"),
])
def test_a_broken_configuration_is_unknown_naming_file_and_line(tmp_path, zones, problem):
    root = tree(tmp_path)
    with (root / "etc/named.zones").open("a") as f:
        f.write(zones)
    found = run(root)
    assert sorted(found) == sorted(bind._TITLES)
    for f in found.values():
        assert f.status == Status.UNKNOWN
        assert "named-checkconf" in f.found
        assert f.found.endswith(f"/etc/named.conf: exited 1: {problem}"), f.found


def test_an_undefined_acl_is_unknown(tmp_path):
    found = run(tree(tmp_path, HARDENED + " allow-query { nobody; };"))
    assert all(f.ok is None for f in found.values())
    assert "/etc/named.conf:5: undefined ACL 'nobody'" in found["bind.version"].found


def test_debian_layout_is_read(tmp_path):
    found = run(tree(tmp_path, "allow-recursion { any; };", conf="etc/bind/named.conf"))
    assert found["bind.recursion"].ok is False
    assert found["bind.version"].ok is False
    assert "/etc/bind/named.conf" in found["bind.version"].remedy


def test_no_named_conf_means_no_findings(tmp_path):
    assert bind.audit(Context(tmp_path, AuditOptions(), CommandRunner())) == []


def test_parser_reads_comments_quotes_and_nested_lists():
    conf = bind.parse('acl "a b" { !{ 10.0.0.0/8; }; "any"; }; // x\n# y\n/* z; } */ '
                      'options { version "say \\"hi\\"; {"; };')
    acl = conf.all("acl")[0]
    assert acl.words == ("acl", "a b")
    assert acl.block is not None and acl.block[0].words == ("!",)
    assert conf.get("options").get("version").words == ("version", 'say "hi"; {')
    stranger = ipaddress.ip_address("203.0.113.77")
    assert bind.allows(acl.block, stranger, {}) is True
    assert bind.allows(acl.block, ipaddress.ip_address("10.1.2.3"), {}) is False
