"""What dnf 4 says, as data: parsers for the text of check-update, updateinfo, transaction
tables, history and needs-restarting (LC_ALL=C output; samples in tests/patch/fixtures)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

TYPES = ("security", "bugfix", "enhancement", "newpackage", "unknown")
SEVERITIES = ("Critical", "Important", "Moderate", "Low", "None")


@dataclass(frozen=True)
class Update:
    """One pending update, as ``dnf check-update`` lists it."""

    name: str
    arch: str
    evr: str  # [epoch:]version-release, epoch only when not 0
    repo: str

    @property
    def nevra(self) -> str:
        return f"{self.name}-{self.evr}.{self.arch}"


@dataclass(frozen=True)
class Advisory:
    """An advisory (erratum) about pending updates."""

    id: str
    type: str  # one of TYPES
    severity: str  # one of SEVERITIES ("None" when the advisory gives none)
    issued: float | None  # epoch seconds; from the cached updateinfo.xml, None if not found
    packages: tuple[str, ...]  # NEVRAs of the pending updates it covers
    cves: tuple[str, ...] = ()
    reboot_suggested: bool = False  # from the cached updateinfo.xml (dnf 4 does not show it)
    title: str = ""
    updated: float | None = None  # epoch seconds, as dnf shows it ("Updated:")
    bugs: tuple[str, ...] = ()

    @property
    def published(self) -> float | None:
        """When it came out: issued, else the update date dnf shows."""
        return self.issued if self.issued is not None else self.updated


@dataclass(frozen=True)
class Change:
    """One package in a transaction; ``from_evr`` is None for an install, ``to_evr`` for a
    removal."""

    name: str
    arch: str
    action: str  # install, upgrade, downgrade, reinstall, remove, obsolete
    from_evr: str | None
    to_evr: str | None

    def __str__(self) -> str:
        return f"{self.name}.{self.arch}: {self.from_evr or '(none)'} -> " \
               f"{self.to_evr or '(removed)'}"


@dataclass(frozen=True)
class Transaction:
    """What a transaction did (``id`` from dnf history) or, dry-run, would do (``id`` None)."""

    id: int | None
    changes: tuple[Change, ...] = ()
    dry_run: bool = False
    return_code: str = ""  # history's Return-Code: "Success", "Failure: 1", "** Aborted **"
    scriptlet_errors: tuple[str, ...] = ()
    scriptlet_output: tuple[str, ...] = field(default=(), repr=False)


def split_nevra(nevra: str) -> tuple[str, str, str]:
    """``name-[e:]v-r.arch`` -> (name, evr, arch); ValueError if it is not one."""
    nvr, dot, arch = nevra.rpartition(".")
    parts = nvr.rsplit("-", 2)
    if not dot or len(parts) != 3 or not all(parts) or not arch:
        raise ValueError(f"not a NEVRA: {nevra!r}")
    name, version, release = parts
    return name, f"{version}-{release}", arch


# --- check-update ---------------------------------------------------------------------------

_EVR = re.compile(r"^(?:\d+:)?[^\s:-]+-[^\s:-]+$")
_NAME_ARCH = re.compile(r"^(?P<name>\S+)\.(?P<arch>[A-Za-z0-9_]+)$")
_CHATTER = ("Last metadata expiration check:", "Security:", "Obsoleting Packages")


def parse_check_update(text: str) -> list[Update]:
    """The packages ``dnf check-update`` lists. Rows are ``name.arch evr repo``; dnf lets a
    long value push the rest of its row onto the next line, so a row's words may span lines.
    Progress lines ("repo  1.2 MB/s | 3 kB  00:00") and notes are passed over; the
    "Obsoleting Packages" section (replacements, listed again) ends the list."""
    out: list[Update] = []
    words: list[str] = []
    for line in text.splitlines():
        if line.startswith("Obsoleting Packages"):
            break
        if not line.strip() or line.startswith(_CHATTER):
            words = []
            continue
        tokens = line.split()
        if not words and len(tokens) > 3:
            continue  # a progress or message line, not a row
        words += tokens
        if len(words) < 3:
            continue
        row, words = words, []
        m = _NAME_ARCH.match(row[0])
        if len(row) == 3 and m and _EVR.match(row[1]):
            out.append(Update(m["name"], m["arch"], row[1], row[2]))
        else:
            log.debug("check-update: not a package row: %r", " ".join(row))
    return out


# --- updateinfo -----------------------------------------------------------------------------

_LIST_ROW = re.compile(r"^(?:i |  )?(?P<id>\S+)\s+(?P<label>\S+)\s+(?P<nevra>\S+)(?:\s.*)?$")


@dataclass
class _Listed:
    type: str
    severity: str
    packages: list[str] = field(default_factory=list)


def parse_updateinfo_list(text: str) -> dict[str, _Listed]:
    """``dnf updateinfo list``: advisory id -> type, severity and the NEVRAs it lists (one
    row per advisory and package: ``RLSA-2025:0001 Important/Sec. hello-1.1-1.noarch``)."""
    out: dict[str, _Listed] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith(_CHATTER):
            continue
        m = _LIST_ROW.match(line)
        if not m:
            log.debug("updateinfo list: not an advisory row: %r", line)
            continue
        label = m["label"]
        if label.endswith("/Sec."):
            kind, sev = "security", label[:-len("/Sec.")]
            sev = sev if sev in SEVERITIES else "None"  # "Unknown/Sec."
        else:
            kind, sev = (label if label in TYPES else "unknown"), "None"
        entry = out.setdefault(m["id"], _Listed(kind, sev))
        if m["nevra"] not in entry.packages:
            entry.packages.append(m["nevra"])
    return out


_RULE = re.compile(r"^={20,}$")
_FIELD = re.compile(r"^ *(?P<key>[A-Za-z][A-Za-z -]*?)?: ?(?P<value>.*)$")


def parse_updateinfo_info(text: str) -> dict[str, dict[str, list[str]]]:
    """``dnf updateinfo info``: advisory id -> field -> lines ("Title", "Type", "Updated",
    "Bugs", "CVEs", "Description", "Severity", ...). Each advisory is a title between two
    rules of "=", then ``Key: value`` lines; a value's further lines have an empty key."""
    out: dict[str, dict[str, list[str]]] = {}
    lines = text.splitlines()
    i = 0
    current: dict[str, list[str]] | None = None
    key = ""
    while i < len(lines):
        line = lines[i]
        if _RULE.match(line) and i + 2 < len(lines) and _RULE.match(lines[i + 2]):
            current = {"Title": [lines[i + 1].strip()]}
            key = ""
            i += 3
            continue
        i += 1
        m = _FIELD.match(line)
        if current is None or not line.strip() or not m:
            continue
        if m["key"]:
            key = m["key"].strip()
            current.setdefault(key, []).append(m["value"])
            if key == "Update ID":
                out[m["value"].strip()] = current
        elif key:
            current[key].append(m["value"])
    return out


def local_time(text: str) -> float | None:
    """Epoch seconds of dnf's "YYYY-MM-DD HH:MM:SS" (printed in local time)."""
    try:
        return time.mktime(time.strptime(text.strip(), "%Y-%m-%d %H:%M:%S"))
    except (ValueError, OverflowError):
        return None


def advisories_from(listed: Mapping[str, _Listed], info: Mapping[str, Mapping[str, list[str]]],
                    extra: Mapping[str, tuple[float | None, bool]]) -> list[Advisory]:
    """Advisories from the list (which pending packages), the info (details) and ``extra``
    (id -> issued, reboot_suggested, from the cached updateinfo.xml)."""
    out = []
    for aid, entry in listed.items():
        fields = info.get(aid, {})

        def one(key: str, fields: Mapping[str, list[str]] = fields) -> str:
            return fields.get(key, [""])[0].strip()

        sev = one("Severity") or entry.severity
        kind = one("Type") or entry.type
        issued, reboot = extra.get(aid, (None, False))
        out.append(Advisory(
            aid, kind if kind in TYPES else "unknown", sev if sev in SEVERITIES else "None",
            issued, tuple(entry.packages),
            cves=tuple(v.strip() for v in fields.get("CVEs", []) if v.strip()),
            reboot_suggested=reboot, title=one("Title"), updated=local_time(one("Updated")),
            bugs=tuple(v.strip() for v in fields.get("Bugs", []) if v.strip())))
    return out


# --- transactions ---------------------------------------------------------------------------

_SECTIONS = {
    "Installing": "install", "Installing dependencies": "install",
    "Installing weak dependencies": "install", "Installing group/module packages": "install",
    "Upgrading": "upgrade", "Downgrading": "downgrade", "Reinstalling": "reinstall",
    "Removing": "remove", "Removing dependent packages": "remove",
    "Removing unused dependencies": "remove",
}


def parse_transaction_table(text: str) -> list[tuple[str, str, str, str]]:
    """The (action, name, arch, evr) rows of the table dnf prints before it asks "Is this
    ok" (what ``--assumeno`` shows). Rows are ``name arch evr repo size``; a long value
    pushes the rest of its row onto the next line. "Skipping packages ..." sections and
    "replacing" lines are not changes of their own."""
    out: list[tuple[str, str, str, str]] = []
    action: str | None = None
    words: list[str] = []
    for line in text.splitlines():
        if not line.startswith(" "):
            words = []
            header = line.rstrip()
            action = _SECTIONS.get(header[:-1]) if header.endswith(":") else None
            if header.startswith("Transaction Summary"):
                break
            continue
        if action is None:
            continue
        tokens = line.split()
        if not words and tokens[:1] == ["replacing"]:
            continue
        words += tokens
        if len(words) >= 5:
            out.append((action, words[0], words[1], words[2]))
            words = []
    return out


_ALTERED = re.compile(r"^ (?:\*\*|  ) (?P<action>\S.*?)\s+(?P<nevra>\S+)\s+(?P<repo>@\S*)\s*$")
_HIST_ACTIONS = {
    "Install": "install", "Dep-Install": "install", "Upgrade": "upgrade",
    "Downgrade": "downgrade", "Reinstall": "reinstall", "Removed": "remove", "Erase": "remove",
    "Obsoleting": "install", "Obsoleted": "obsolete",
}
_OLD_SIDE = {"Upgraded": "upgrade", "Downgraded": "downgrade", "Reinstalled": "reinstall"}


def parse_history_info(text: str) -> Transaction:
    """``dnf history info N``: the id, return code, packages altered (an "Upgrade" row and
    its "Upgraded" row become one change, from -> to) and scriptlet output."""
    tid: int | None = None
    code = ""
    section = ""
    new: dict[tuple[str, str], tuple[str, str]] = {}  # (name, arch) -> (action, evr)
    old: dict[tuple[str, str], str] = {}
    order: list[tuple[str, str]] = []
    output: list[str] = []
    for line in text.splitlines():
        if line.startswith("Transaction ID :"):
            first = line.split(":", 1)[1].strip().split("..")[-1]
            tid = int(first) if first.isdigit() else None
        elif line.startswith("Return-Code    :"):
            code = line.split(":", 1)[1].strip()
        elif line.rstrip().endswith(":") and not line.startswith(" "):
            section = line.rstrip()[:-1]
        elif section == "Packages Altered":
            m = _ALTERED.match(line)
            if not m:
                continue
            try:
                name, evr, arch = split_nevra(m["nevra"])
            except ValueError:
                continue
            act = m["action"].strip()
            key = (name, arch)
            if key not in order:
                order.append(key)
            if act in _OLD_SIDE:
                old[key] = evr
            elif act in _HIST_ACTIONS:
                new[key] = (_HIST_ACTIONS[act], evr)
        elif section in ("Scriptlet output", "Errors"):
            output.append(re.sub(r"^\s*\d+ ", "", line))
    changes = []
    for key in order:
        if key in new:
            action, evr = new[key]
            if action in ("remove", "obsolete"):
                changes.append(Change(*key, action, evr, None))
            else:
                changes.append(Change(*key, action, old.get(key), evr))
    return Transaction(tid, tuple(changes), return_code=code,
                       scriptlet_errors=scriptlet_errors("\n".join(output)),
                       scriptlet_output=tuple(output))


def parse_history_ids(text: str) -> list[int]:
    """Transaction ids from ``dnf history list`` (newest first)."""
    return [int(m[1]) for m in re.finditer(r"^\s*(\d+) \|", text, re.MULTILINE)]


# --- messages -------------------------------------------------------------------------------

_SCRIPTLET = re.compile(
    r"Error in \w+ scriptlet in rpm package \S+"  # dnf's own, on stderr
    r"|^(?:error|warning): %\w+\([^)]*\) scriptlet failed.*$"  # rpm, for a shell scriptlet
    r"|^error: lua script failed: .*$", re.MULTILINE)  # rpm, for a <lua> scriptlet


def scriptlet_errors(text: str) -> tuple[str, ...]:
    """The lines saying a scriptlet failed, in order, each once."""
    return tuple(dict.fromkeys(m[0].strip() for m in _SCRIPTLET.finditer(text)))


_REPO_FAILED = re.compile(r"(?:Failed to download metadata for repo|Errors during downloading "
                          r"metadata for repository) '([^']+)'")
REPO_TROUBLE = ("Cannot download repomd.xml", "Failed to download metadata for repo",
                "Error downloading packages", "All mirrors were tried",
                "Cannot retrieve repository metadata")


def failed_repos(text: str) -> list[str]:
    return list(dict.fromkeys(_REPO_FAILED.findall(text)))


def ignored_repos(text: str) -> list[str]:
    """Repositories dnf skipped (skip_if_unavailable): "Ignoring repositories: a, b"."""
    m = re.search(r"^Ignoring repositories: (.+)$", text, re.MULTILINE)
    return [r.strip() for r in m[1].split(",")] if m else []


def lock_holder(text: str) -> int | None:
    """The pid dnf names as holding its lock ("metadata already locked by 123", or while
    waiting, "Waiting for process with pid 123 to finish.")."""
    m = re.search(r"already locked by (\d+)|Waiting for process with pid (\d+) to finish", text)
    return int(m[1] or m[2]) if m else None


def rpm_lock(text: str) -> str | None:
    """The rpm transaction lock dnf could not take (rpm, PackageKit or another libdnf user
    holds it): "can't create transaction lock on /var/lib/rpm/.rpm.lock (...)"."""
    m = re.search(r"can't create transaction lock on (\S+)", text)
    return m[1] if m else None


def parse_reboot_hint(text: str) -> list[str]:
    """The core packages ``dnf needs-restarting -r`` lists as updated since boot."""
    return re.findall(r"^\s+\* (\S+)\s*$", text, re.MULTILINE)
