"""OpenDKIM's tables, read from its configuration (``KeyTable``, ``SigningTable``): every
signing rule names a key the KeyTable has, every key file exists and is readable by its owner
only, and wildcard rules (``*@example.com``) sit in a ``refile:`` table, the only kind where
OpenDKIM treats ``*`` as a wildcard. Results are part of the milter check."""

from __future__ import annotations

import re
import stat
from pathlib import Path

from agent.model import Check, Result, Status

MAX_LINES = 10000


def _directives(text: str) -> dict[str, str]:
    out = {}
    for raw in text.splitlines()[:MAX_LINES]:
        parts = raw.split("#", 1)[0].split(None, 1)
        if len(parts) == 2:
            out[parts[0].lower()] = parts[1].strip()
    return out


def _table(spec: str) -> tuple[str, str]:
    """(kind, path) of a dataset spec: ``refile:/p``, ``file:/p`` or ``/p`` (a file)."""
    kind, sep, path = spec.partition(":")
    if not sep or spec.startswith("/"):
        return "file", spec
    return kind, path


def _rows(path: Path) -> list[tuple[str, str]]:
    rows = []
    for raw in path.read_text(errors="replace").splitlines()[:MAX_LINES]:
        parts = raw.split("#", 1)[0].split(None, 1)
        if len(parts) == 2:
            rows.append((parts[0], parts[1].strip()))
    return rows


def opendkim_results(check: Check, conf: Path, root: Path) -> list[Result]:
    target = "opendkim"
    remedy_conf = f"fix {conf}, then systemctl restart opendkim"

    def result(status: Status, summary: str, details: list[str], remedy: str = "") -> Result:
        return check.result(status, summary[:300], target=target, details="\n".join(details),
                            remedy=remedy)

    try:
        settings = _directives(conf.read_text(errors="replace"))
    except OSError as e:
        return [result(Status.UNKNOWN, f"cannot read {conf}: {e.strerror or e}", [],
                       f"make {conf} readable to steward")]
    if "keytable" not in settings or "signingtable" not in settings:
        return []  # single-key setup (Domain/Selector/KeyFile): nothing to cross-check
    details = [f"{conf}: KeyTable {settings['keytable']}, SigningTable "
               f"{settings['signingtable']}"]
    kt_kind, kt_path = _table(settings["keytable"])
    st_kind, st_path = _table(settings["signingtable"])
    if kt_kind not in ("file", "refile") or st_kind not in ("file", "refile"):
        return [result(Status.UNKNOWN, "KeyTable/SigningTable are not files: not checked",
                       details)]
    try:
        keys = _rows(root / kt_path.lstrip("/"))
        rules = _rows(root / st_path.lstrip("/"))
    except OSError as e:
        return [result(Status.CRIT, f"cannot read an OpenDKIM table: {e.filename}: "
                       f"{e.strerror or e}", details, remedy_conf)]
    problems: list[tuple[Status, str]] = []
    table = {}
    for name, value in keys:
        fields = value.split(":", 2)
        if len(fields) != 3:
            problems.append((Status.CRIT, f"KeyTable entry {name}: {value[:80]!r} is not "
                             "domain:selector:keyfile"))
            continue
        table[name] = fields
        keyfile = fields[2].strip()
        try:
            st = (root / keyfile.lstrip("/")).stat()
        except OSError as e:
            problems.append((Status.CRIT, f"key {name}: {keyfile}: {e.strerror or e}"))
            continue
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            problems.append((Status.WARN, f"key {name}: {keyfile} is mode "
                             f"{stat.S_IMODE(st.st_mode):04o}: readable beyond its owner "
                             "(chmod 600, owned by opendkim)"))
    used = set()
    for pattern, value in rules:
        keyname = value.split()[0]
        used.add(keyname)
        if keyname not in table:
            problems.append((Status.CRIT, f"SigningTable rule {pattern} names key {keyname}, "
                             "which the KeyTable does not have: that mail goes out unsigned"))
        if "*" in pattern and st_kind != "refile":
            problems.append((Status.CRIT, f"SigningTable rule {pattern} has a wildcard but "
                             f"the table is {st_kind}: (no wildcards): it matches nothing; use "
                             f"SigningTable refile:{st_path}"))
        elif st_kind == "refile" and not re.fullmatch(r"[^\s]+", pattern):
            problems.append((Status.CRIT, f"SigningTable rule {pattern!r} is not a pattern"))
    unused = [n for n in table if n not in used]
    details.append(f"{len(table)} key(s), {len(rules)} signing rule(s)")
    if unused:
        details.append(f"keys no rule uses: {', '.join(unused[:10])}")
    details += [f"{s.long_name}: {t}" for s, t in problems[:20]]
    if not problems:
        domains = sorted({f[0] for f in table.values()})
        return [result(Status.OK, f"OpenDKIM tables consistent: {len(rules)} rule(s), keys "
                       f"for {', '.join(domains[:6]) or 'no domain'}", details)]
    worst = max((s for s, _ in problems), key=lambda s: s.severity)
    first = next(t for s, t in problems if s is worst)
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return [result(worst, first + more, details, remedy_conf)]
