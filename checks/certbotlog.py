"""What certbot itself recorded about its renewals, read from its own log.

Every certbot invocation logs to ``<logs_dir>/letsencrypt.log`` in lines
``asctime:LEVEL:logger:message`` (certbot's FILE_FMT), starting with ``certbot version:``.
Upstream (EPEL's package too) rotates the file at each start to ``.1``, ``.2``, ... (up to
``--max-log-backups``, 1000): one run per file. Debian's package sets ``max-log-backups = 0``
in /etc/letsencrypt/cli.ini and leaves rotation to logrotate (weekly, compressed): every run
appended to one file, older weeks in ``letsencrypt.log.N.gz``. Both are read as runs split at
``certbot version:``.

A renew run logs ``Processing <renewal conf>`` per lineage (the ``Arguments:`` line does not
name the verb) and, at its end, one line per lineage: ``<fullchain> (success)``,
``<fullchain> expires on <date> (skipped)``, ``<fullchain> (failure)`` or ``<renewal conf>
(parsefail)``; each failure before that as ``Failed to renew certificate <name> with error:
<error>``; a run that died first logs ``Exiting abnormally``. ``--dry-run`` runs are not
renewals and are passed over.

The lineage itself: ``live/<name>/cert.pem`` links to ``archive/<name>/cert<N>.pem``; a
renewal writes ``cert<N+1>.pem`` and then moves the links, so a live link behind the newest
archive file is a renewal that stopped half-way.

Only the last ``TAIL`` bytes of each file are read (of a .gz, at most ``MAX_GZIP`` bytes are
inflated to reach its end), and at most ``MAX_FILES`` files: a log of any size costs the
same."""

from __future__ import annotations

import gzip
import os
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

MAX_FILES = 40
TAIL = 1024 * 1024  # the end of a file: a renew run logs some 30 kB per lineage
MAX_GZIP = 32 * 1024 * 1024  # inflated bytes read from one rotated .gz
LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+:([A-Z]+):([\w.]+):(.*)$")
START = ":certbot._internal.main:certbot version:"
ARGS = re.compile(r":certbot\._internal\.main:Arguments: (\[.{0,4000}?\])\s*$")
# certbot wraps the notification at 80 columns: a long path goes on the next line
PROCESSING = re.compile(r"Notifying user: Processing(?:\s+\S*/renewal/([^/\s]{1,200})\.conf)?\s*$")
CONF = re.compile(r"^\s*\S*/renewal/([^/\s]{1,200})\.conf\s*$")
OUTCOME = re.compile(r"/live/([^/\s]{1,200})/fullchain\.pem(?: expires on "
                     r"(\d{4}-\d\d-\d\d))? \((success|failure|skipped)\)\s*$")
PARSEFAIL = re.compile(r"/renewal/([^/\s]{1,200})\.conf \(parsefail\)\s*$")
FAILED = re.compile(r"Failed to renew certificate (\S{1,200}) with error: (.*)$")
ERROR = re.compile(r":(?:ERROR|CRITICAL):[\w.]+:(.*)$")


@dataclass
class RenewRun:
    """One ``certbot renew`` run as its log shows it."""

    path: Path
    started: str  # the first line's time, as certbot wrote it (local time), or "?"
    ended: float  # the last line's time (epoch), 0.0 when no line had one
    arguments: str = ""
    processed: list[str] = field(default_factory=list)  # lineages it looked at
    outcomes: dict[str, str] = field(default_factory=dict)  # lineage -> success/failure/...
    errors: dict[str, str] = field(default_factory=dict)  # lineage -> certbot's error
    finished: bool = False  # the summary was logged
    last_error: str = ""  # the last ERROR line (a run that died before its summary)


def log_files(logs_dir: Path) -> list[Path]:
    """letsencrypt.log, then its rotations (.1 or .1.gz, .2, ...) newest first."""
    try:
        names = [e.name for e in os.scandir(logs_dir) if e.name.startswith("letsencrypt.log")]
    except OSError:
        return []
    numbered = []
    for name in names:
        m = re.fullmatch(r"letsencrypt\.log(?:[.-](\d{1,6}))?(\.gz)?", name)
        if m:
            numbered.append((int(m.group(1) or 0), name))
    return [logs_dir / name for _, name in sorted(numbered)[:MAX_FILES]]


def _tail(path: Path) -> str:
    """The last TAIL bytes of ``path`` (inflated, for a .gz), from a line's start."""
    if path.name.endswith(".gz"):
        keep = b""
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        total = 0
        with path.open("rb") as f:
            while total < MAX_GZIP:
                chunk = f.read(65536)
                if not chunk:
                    break
                out = inflate.decompress(chunk, MAX_GZIP - total)
                total += len(out)
                keep = (keep + out)[-TAIL:]
        data = keep
    else:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - TAIL))
            data = f.read(TAIL)
            if size > TAIL:
                data = data[data.find(b"\n") + 1:]
    return data.decode("utf-8", errors="replace")


def _epoch(stamp: str) -> float:
    try:
        return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))
    except (ValueError, OverflowError):
        return 0.0


def _runs_in(path: Path, text: str) -> list[RenewRun]:
    """The renew runs in one file's text, newest first."""
    runs: list[RenewRun] = []
    run = RenewRun(path, "?", 0.0)
    segments = [run]
    wrapped = False  # the previous line was "Processing" without its path
    for raw in text.splitlines():
        line = raw[:2000]
        if wrapped and (c := CONF.match(line)):
            run.processed.append(c.group(1))
        wrapped = False
        m = LINE.match(line)
        if m and START in line:
            run = RenewRun(path, m.group(1), _epoch(m.group(1)))
            segments.append(run)
            continue
        if m:
            run.ended = _epoch(m.group(1)) or run.ended
        if a := ARGS.search(line):
            run.arguments = a.group(1)[:300]
        elif p := PROCESSING.search(line):
            if p.group(1):
                run.processed.append(p.group(1))
            wrapped = not p.group(1)
        elif o := OUTCOME.search(line):
            run.outcomes[o.group(1)] = o.group(3)
            run.finished = True
        elif pf := PARSEFAIL.search(line):
            run.outcomes[pf.group(1)] = "parsefail"
            run.finished = True
        elif "Notifying user: No renewals were attempted" in line:
            run.finished = True
        if f := FAILED.search(line):
            run.errors[f.group(1)] = f.group(2).strip()[:300]
        if (e := ERROR.search(line)) and e.group(1).strip():
            run.last_error = e.group(1).strip()[:300]
    for seg in reversed(segments):
        if "--dry-run" in seg.arguments or not (seg.processed or seg.outcomes or seg.errors):
            continue
        for name in seg.errors:
            seg.outcomes.setdefault(name, "failure")
        runs.append(seg)
    return runs


def renew_runs(logs_dir: Path, want: int = 1) -> list[RenewRun]:
    """The renew runs logged in ``logs_dir``, newest first: files are read until ``want``
    runs are found (or MAX_FILES files)."""
    runs: list[RenewRun] = []
    for path in log_files(logs_dir):
        try:
            runs += _runs_in(path, _tail(path))
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile):
            continue
        if len(runs) >= want:
            break
    return runs


def lineage_versions(base: Path, name: str) -> tuple[int | None, int | None]:
    """(the version live/<name>/cert.pem links to, the newest cert<N>.pem in archive/<name>);
    None where it cannot be told (no link, no archive)."""
    live = None
    try:
        target = os.readlink(base / "live" / name / "cert.pem")
        m = re.search(r"cert(\d{1,6})\.pem$", target)
        live = int(m.group(1)) if m else None
    except OSError:
        pass
    newest = None
    try:
        for e in os.scandir(base / "archive" / name):
            m = re.fullmatch(r"cert(\d{1,6})\.pem", e.name)
            if m:
                newest = max(newest or 0, int(m.group(1)))
    except OSError:
        pass
    return live, newest
