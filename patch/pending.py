"""What is pending: updates and their advisories as one summary, and the small state file
(``<state_dir>/patch/pending.json``) that the audit's system.security_updates rule reads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.fileio import write_atomic
from patch.dnf import Advisory, Dnf, Update
from patch.dnfparse import split_nevra

STATE_FILE = "patch/pending.json"  # under the state dir: /var/lib/steward/patch/pending.json


@dataclass(frozen=True)
class Pending:
    updates: tuple[Update, ...]
    advisories: tuple[Advisory, ...]
    checked: float  # epoch seconds

    @property
    def security(self) -> list[Advisory]:
        return [a for a in self.advisories if a.type == "security"]

    @property
    def security_packages(self) -> list[str]:
        """Names of the pending packages that fix a security advisory."""
        names = set()
        for a in self.security:
            for nevra in a.packages:
                try:
                    names.add(split_nevra(nevra)[0])
                except ValueError:
                    continue
        pending = {u.name for u in self.updates}
        return sorted(names & pending if pending else names)

    @property
    def oldest_security_issued(self) -> float | None:
        dates = [a.published for a in self.security if a.published is not None]
        return min(dates) if dates else None

    def advisories_of(self, update: Update) -> list[Advisory]:
        return [a for a in self.advisories if update.nevra in a.packages]

    def state(self) -> dict[str, Any]:
        """The pending.json document."""
        return {"security": len(self.security_packages), "all": len(self.updates),
                "checked": self.checked, "oldest_security_issued": self.oldest_security_issued}

    def to_json(self) -> dict[str, Any]:
        """Everything, for ``steward patch check --format json``."""
        return {**self.state(),
                "updates": [{"name": u.name, "arch": u.arch, "evr": u.evr, "repo": u.repo,
                             "advisories": [a.id for a in self.advisories_of(u)]}
                            for u in self.updates],
                "advisories": [{"id": a.id, "type": a.type, "severity": a.severity,
                                "issued": a.issued, "updated": a.updated,
                                "packages": list(a.packages), "cves": list(a.cves),
                                "reboot_suggested": a.reboot_suggested, "title": a.title}
                               for a in self.advisories]}


def look(dnf: Dnf, now: float, *, security_only: bool = False,
         every_advisory: bool = False) -> Pending:
    """Ask dnf (refreshing its metadata): the pending updates (only security fixes if
    ``security_only``) and the security advisories (every advisory if ``every_advisory``)."""
    updates = dnf.check_update(security=security_only, refresh=True)
    advisories = dnf.advisories(security=not every_advisory) if updates else []
    return Pending(tuple(updates), tuple(advisories), now)


def write_state(state_dir: Path, pending: Pending) -> Path:
    """pending.json: the counts the audit reads, and everything (``to_json``) so a one-shot
    ``steward check`` can judge the daemon's last look instead of asking dnf again."""
    path = state_dir / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(pending.to_json(), indent=1) + "\n")
    return path


def read_state(state_dir: Path) -> Pending | None:
    """The last look written by ``write_state``; None when there is none or it is unreadable
    (then dnf is asked)."""
    try:
        doc = json.loads((state_dir / STATE_FILE).read_text(encoding="utf-8"))
        updates = tuple(Update(u["name"], u["arch"], u["evr"], u["repo"])
                        for u in doc["updates"])
        advisories = tuple(Advisory(
            a["id"], a["type"], a["severity"], a["issued"], tuple(a["packages"]),
            tuple(a["cves"]), bool(a["reboot_suggested"]), a["title"], a["updated"])
            for a in doc["advisories"])
        return Pending(updates, advisories, float(doc["checked"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
