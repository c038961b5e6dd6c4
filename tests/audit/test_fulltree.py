"""Over the whole-appliance tree of tests/audit/fulltree.py (what bench/audit times), every
rule of every family is judged, PASS or FAIL, never UNKNOWN or left out: the rules are found
in the families' source, so a rule added without its configuration in the tree fails here."""

from __future__ import annotations

import ast
import functools
import json
import os
import shutil
from pathlib import Path

import pytest

from checks.audit import bind, dovecot, families, httpd, postfix, sshd, system
from checks.audit.base import TOOL_PATH
from tests.audit import fulltree
from tests.conftest import REPO, run_steward

TOOLS = ("postconf", "doveconf", "sshd", "ssh-keygen", "named-checkconf", "ausearch")
MISSING = [t for t in TOOLS if shutil.which(t, path=TOOL_PATH) is None]
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, named-checkconf -t)"),
    pytest.mark.skipif(bool(MISSING) or not Path("/usr/lib/firewalld/zones").is_dir(),
                       reason=f"needs the daemons' tools ({', '.join(MISSING)} missing; "
                       "firewalld's zones): ./bootstrap installs them"),
]

# Sockets and running daemons exist only on the running system, never in a sysroot.
LIVE_ONLY = {"firewall.running", "system.listen", "system.plaintext"}
# Stand-ins reported as UNKNOWN when a family's configuration cannot be read: not rules.
NOT_RULES = {"firewall.config"}
# Ids built wholly at run time, f"{family}.{name}...": where their names come from.
DYNAMIC = {
    "system": {f"system.{s[0]}" for s in system.SECRETS} | {"system.secret_files"},
    "firewall": {f"firewall.{r}" for r in ("open", "plaintext", "admin")},
}
DYNAMIC_COUNT = {"system": 2, "firewall": 1}  # such f-strings in each module


@functools.cache
def declared(family: str) -> tuple[frozenset[str], int]:
    """The rule ids in the family's module: string literals "family.name", f-strings
    f"family.name.{instance}" (per zone, per domain: "family.name" then), and the count of
    f-strings that build the whole name at run time (f"family.{name}")."""
    tree = ast.parse((REPO / "checks/audit" / f"{family}.py").read_text())
    ids, dynamic = set(), 0
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and node.values and \
                isinstance(node.values[0], ast.Constant) and \
                str(node.values[0].value).startswith(f"{family}."):
            head = str(node.values[0].value)
            if head == f"{family}.":
                dynamic += 1
            else:
                ids.add(head.rstrip("."))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                node.value.startswith(f"{family}.") and \
                all(p.isidentifier() for p in node.value.split(".")):
            ids.add(node.value)
    return frozenset(ids | DYNAMIC.get(family, set())), dynamic


def covers(rule: str, judged: str) -> bool:
    return judged == rule or judged.startswith(rule + ".")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("fulltree")
    tree = fulltree.build(tmp / "tree")
    fulltree.host_ready()
    done = run_steward("audit", "--sysroot", str(tree), "--config",
                       str(tree / fulltree.CONFIG.lstrip("/")), "--format", "json",
                       "--state-dir", str(tmp / "state"))
    assert done.returncode in (1, 2), done.stderr  # its failures: WARN and CRIT, no UNKNOWN
    return {r["check"][len("audit:"):]: r["status"] for r in json.loads(done.stdout)["results"]
            if r["check"].startswith("audit:")}


def family_names() -> list[str]:
    return [name for name, _ in families()]


def test_every_rule_of_every_family_is_judged_over_the_full_tree(results):
    assert {r: s for r, s in results.items() if s == "UNKNOWN"} == {}
    for family in family_names():
        rules, dynamic = declared(family)
        assert dynamic == DYNAMIC_COUNT.get(family, 0), \
            f"{family}: a rule id built at run time; add where its names come from to DYNAMIC"
        wanted = rules - LIVE_ONLY - NOT_RULES
        assert wanted, family
        missing = sorted(r for r in wanted if not any(covers(r, j) for j in results))
        assert missing == [], f"{family}: not judged over tests/audit/fulltree.py's tree"
        mine = [j for j in results if j.startswith(f"{family}.")]
        assert all(any(covers(r, j) for r in wanted) for j in mine), (family, mine)
    assert all(any(covers(r, j) for f in family_names() for r in declared(f)[0]) for j in results)


def test_the_full_tree_has_failures_of_every_kind_and_passes(results):
    """The tree is an appliance as found, not a showroom: passes and failures, both severities."""
    statuses = set(results.values())
    assert {"OK", "WARN", "CRIT"} <= statuses
    assert results["firewall.plaintext.public"] == "WARN"
    assert results["firewall.admin.admin"] == "OK"  # the admin zone is the admins' way in
    assert any(r.startswith("selinux.avc.") for r in results)


def test_the_rule_scan_finds_instance_rules_and_site_policy_rules():
    for module, registry in ((postfix, postfix.RULES), (dovecot, dovecot.RULES)):
        assert {r.rule for r in registry} <= declared(module.__name__.rsplit(".")[-1])[0]
    for module, titles in ((httpd, httpd._TITLES), (bind, bind._TITLES), (sshd, sshd._RULES)):
        assert set(titles) <= declared(module.__name__.rsplit(".")[-1])[0]
    fw, _ = declared("firewall")
    assert {"firewall.enabled", "firewall.target", "firewall.open", "firewall.admin"} <= fw
    assert "firewall.config" in fw  # left out by NOT_RULES, but found
    assert "system.security_updates" in declared("system")[0]
