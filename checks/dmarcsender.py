"""Whether this appliance's own DMARC report sender ran in the last day: ``rspamadm
dmarc_report`` (rspamd) or OpenDMARC's ``opendmarc-reports``, scheduled from cron. The
evidence is a file the sender writes each run — the file its cron line redirects output to,
or ``sender_evidence`` from the config — and its age."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SENDERS = ("rspamadm dmarc_report", "opendmarc-reports")
CRON_PLACES = ("etc/crontab", "etc/cron.d", "etc/cron.daily", "etc/cron.hourly",
               "var/spool/cron", "var/spool/cron/crontabs")
MAX_CRON_FILES = 200
MAX_CRON_BYTES = 256 * 1024


@dataclass(frozen=True)
class Schedule:
    sender: str      # one of SENDERS
    where: str       # the cron file naming it
    line: str        # the line itself (shortened)
    output: str      # the file its output is redirected to, "" when none


def _cron_files(sysroot: Path) -> list[Path]:
    out: list[Path] = []
    for place in CRON_PLACES:
        p = sysroot / place
        if p.is_file() and not p.is_symlink():
            out.append(p)
        elif p.is_dir() and not p.is_symlink():
            out += sorted(q for q in p.iterdir() if q.is_file() and not q.is_symlink())
    return out[:MAX_CRON_FILES]


def find_schedule(sysroot: Path) -> Schedule | None:
    """The first cron entry (not commented out) running a DMARC report sender."""
    for path in _cron_files(sysroot):
        try:
            with path.open("rb") as f:
                text = f.read(MAX_CRON_BYTES).decode("utf-8", errors="replace")
        except OSError:
            continue
        for raw in text.splitlines():
            line = raw.strip()
            if line.startswith("#"):
                continue
            for sender in SENDERS:
                if re.search(re.escape(sender).replace(r"\ ", r"\s+"), line):
                    m = re.search(r"(?:^|\s)(?:1|&)?>>?\s*(/[^\s;|&]+)", line)
                    output = m.group(1) if m and m.group(1) != "/dev/null" else ""
                    return Schedule(sender, "/" + str(path.relative_to(sysroot)), line[:200],
                                    output)
    return None


def evidence_age(sysroot: Path, path: str, now: float) -> float | None:
    """Seconds from the last write of ``path`` (inside sysroot) to ``now``; None if it does not
    exist."""
    try:
        mtime = (sysroot / path.lstrip("/")).stat().st_mtime
    except OSError:
        return None
    return max(0.0, now - mtime)
