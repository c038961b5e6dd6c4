"""What the audit family tests share: a family's findings on a test tree, by rule id, read
through the daemons' tools or (``fallback``) through the files alone, as on a host without
them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agent.model import Status
from agent.system.commands import CommandRunner
from checks.audit.base import Context, Finding, Rule
from checks.audit.options import AuditOptions


class NoTools(Context):
    """A host without postconf, doveconf or any other tool: the families read files."""

    def tool(self, name: str) -> str | None:
        return None


def findings(audit: Callable[[Context], Iterable[Finding]], root: Path, fallback: bool = False,
             **options: Any) -> dict[str, Finding]:
    """``audit`` (a family's) on the sysroot ``root``, with ``options`` for [checks.audit]."""
    ctx = (NoTools if fallback else Context)(root, AuditOptions(**options), CommandRunner())
    return {f.rule: f for f in audit(ctx)}


def pass_every_rule(found: dict[str, Finding], rules: Iterable[Rule[Any]], source: str) -> None:
    """Each of ``rules`` judged and passing, every field of its finding filled."""
    assert set(found) == {r.rule for r in rules}, sorted(found)
    for f in found.values():
        assert f.status is Status.OK, f
        assert f.title and f.rationale and f.found and f.expected and f.remedy, f
        assert f.source == source, f
