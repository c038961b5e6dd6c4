"""Keyword traps on log files and the journal: alert when a pattern shows up in new lines.

Each run reads only what was written since the last one (positions survive restarts in
``logtraps.json``). A match turns the trap non-OK and keeps it so until ``interval`` seconds
pass without another, so a burst is one alert whose summary counts the repeats; the seed
appliance mailed such a trap at most every 900 s per keyword.
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from agent.config.schema import REGEX, CheckOptions, Parser, number, option, table
from agent.env import Env
from agent.fileio import flocked, write_atomic
from agent.model import Check, Metric, Result, Status
from agent.quote import quote
from agent.system.commands import CommandError

STATE_FILE = "logtraps.json"
LINE_SHOWN = 160  # characters of a matching line in a summary
RECENT_KEPT = 5  # matching lines kept for the details
JOURNAL_MAX_ENTRIES = 20000  # per run; journalctl -n keeps the newest, the cursor stays right


def _name(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9_.@-]+", v):
        raise ValueError("not a name of letters, digits, _ . @ -")
    return v


def _trap(v: Any) -> Mapping[str, Any]:
    """One trap as a read-only table (so ``steward config show`` can print it back)."""
    if not isinstance(v, Mapping):
        raise ValueError("not a table")
    unknown = sorted(set(v) - {"pattern", "file", "journal", "status", "interval"})
    if unknown:
        raise ValueError(f"unknown key {quote(unknown[0])}")
    pattern, kind = v.get("pattern"), "file" if "file" in v else "journal"
    try:
        REGEX.parse(pattern)
    except ValueError as e:
        raise ValueError(f"pattern {quote(pattern)}: {e}") from None
    if ("file" in v) == ("journal" in v):
        raise ValueError("needs exactly one of file or journal")
    if not isinstance(v[kind], str) or not v[kind] or (
            kind == "file" and not os.path.isabs(v[kind])):
        raise ValueError("file must be an absolute path; journal a unit name or \"*\"")
    if v.get("status", "WARN") not in ("WARN", "CRIT"):
        raise ValueError('status must be "WARN" or "CRIT"')
    return MappingProxyType({"pattern": pattern, kind: v[kind], "status": v.get("status", "WARN"),
                             "interval": number(1, 7 * 86400).parse(v.get("interval", 900.0))})


TRAP = Parser(_trap, '{ pattern = "regex", file = "/abs/path" or journal = "unit" or "*", '
                     'status = "WARN" or "CRIT", interval = seconds }')


@dataclass(frozen=True)
class LogTrapOptions(CheckOptions):
    traps: Mapping[str, Mapping[str, Any]] | None = option(
        None, table(Parser(_name, "a name"), TRAP),
        "name -> { pattern, file or journal, status, interval }; each is one check; "
        "none by default")
    max_read: int = option(8 << 20, number(4096, 1 << 30, integer=True),
                           "bytes of a log file read per run at most; the rest waits")


@dataclass
class News:
    """What one run read: the new lines, where to start next time, and remarks."""

    lines: list[str]
    position: dict[str, Any]
    notes: list[str]


def _cut_at_newline(data: bytes) -> bytes:
    """Whole lines only: a half-written line is read next time."""
    return data[:data.rfind(b"\n") + 1]


def _read_from(fd: int, offset: int, budget: int) -> tuple[bytes, bool]:
    """Up to ``budget`` bytes from ``offset``; True when more was there."""
    data = os.pread(fd, budget + 1, offset)
    return data[:budget], len(data) > budget


def find_rotated(path: Path, dev: int, ino: int) -> Path | None:
    """The renamed old log (FILE.1, FILE-20240101, FILE.0...) that still has inode ``ino``."""
    prefixes = (path.name + ".", path.name + "-")
    try:
        for e in os.scandir(path.parent) if ino else ():
            if e.name.startswith(prefixes) and e.inode() == ino and e.stat(
                    follow_symlinks=False).st_dev == dev:
                return Path(e.path)
    except OSError:  # the directory or a candidate vanished: the old lines are lost
        pass
    return None


def read_file_news(path: Path, pos: Mapping[str, Any] | None, budget: int) -> News:
    """New lines of ``path`` since ``pos`` (dev, ino, off); None means start at the end."""
    notes: list[str] = []
    chunks: list[bytes] = []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = -1
    try:
        st = os.fstat(fd) if fd >= 0 else None
        if pos is None:  # first run: old history is not news
            new = {"dev": st.st_dev, "ino": st.st_ino, "off": st.st_size} if st else \
                  {"dev": 0, "ino": 0, "off": 0}  # not there yet: all of it will be news
            return News([], new, notes)
        dev, ino, off = pos["dev"], pos["ino"], pos["off"]
        if st is None or (st.st_dev, st.st_ino) != (dev, ino):
            old = find_rotated(path, dev, ino)
            if old is not None:
                with open(old, "rb") as fh:
                    data, more = _read_from(fh.fileno(), off, budget)
                if more:  # come back to the old file next run
                    data = _cut_at_newline(data) or data
                    notes.append(f"read {len(data)} bytes of the rotated {old.name}; "
                                 f"the rest next run")
                    return News(_lines([data]), {"dev": dev, "ino": ino,
                                                 "off": off + len(data)}, notes)
                chunks.append(data)
                budget -= len(data)
                notes.append(f"{path.name} was rotated; read the rest of {old.name}")
            elif ino:
                notes.append(f"{path.name} was replaced; its old version was not found, "
                             f"lines written to it after the last run are not seen")
            if st is None:
                if not chunks:
                    raise FileNotFoundError(errno.ENOENT, "no such file")
                notes.append(f"{path.name} is not there (yet); when it is, it is read whole")
                return News(_lines(chunks), {"dev": 0, "ino": 0, "off": 0}, notes)
            off = 0
        elif st.st_size < off:
            notes.append(f"{path.name} shrank (copytruncate?); reading from its start")
            off = 0
        data, more = _read_from(fd, off, budget)
        whole = _cut_at_newline(data)
        if more and not whole:
            whole = data  # one line longer than the budget: take it, or never get past it
        if more:
            notes.append(f"read {len(whole)} bytes of {path}, the limit per run; "
                         f"the rest next run")
        chunks.append(whole)
        return News(_lines(chunks), {"dev": st.st_dev, "ino": st.st_ino,
                                     "off": off + len(whole)}, notes)
    finally:
        if fd >= 0:
            os.close(fd)


def _lines(chunks: Iterable[bytes]) -> list[str]:
    return [ln for c in chunks for ln in c.decode("utf-8", errors="replace").splitlines()]


def _message(entry: Mapping[str, Any]) -> str:
    msg = entry.get("MESSAGE")
    if isinstance(msg, list):  # binary-safe form: a list of byte values
        return bytes(b for b in msg if isinstance(b, int) and 0 <= b < 256).decode(
            "utf-8", errors="replace")
    return msg if isinstance(msg, str) else ""


def read_journal_news(env: Env, unit: str, cursor: str | None, timeout: float) -> News:
    """New journal messages after ``cursor``; None: only learn the current cursor."""
    if cursor is None:
        # The whole journal's cursor, even for a unit: a unit without entries yet has none,
        # and --after-cursor of the whole journal filtered by -u works all the same.
        out = env.commands.run(["journalctl", "--no-pager", "--show-cursor", "-n", "0"],
                               timeout=timeout).stdout
        return News([], {"cursor": _last_cursor(out)}, [])
    # --all: json output would turn fields over 4 KiB into null
    argv = ["journalctl", "--no-pager", "--show-cursor", f"--after-cursor={cursor}",
            "-o", "json", "--all", "-n", str(JOURNAL_MAX_ENTRIES)]
    argv += [] if unit == "*" else ["-u", unit]
    done = env.commands.run(argv, timeout=timeout, ok_codes=(0, 1))
    if done.returncode == 1:  # journalctl's "no entries" for -u is exit 1 without a word
        if "seek to cursor" in done.stderr:  # e.g. the journal was rotated away
            news = read_journal_news(env, unit, None, timeout)
            news.notes.append(f"the saved journal position was not found ({done.stderr.strip()})"
                              f"; entries since the last run may have been missed")
            return news
        if done.stderr.strip():
            raise CommandError(argv, 1, done.stderr)
    lines, last, entries = [], cursor, 0
    for raw in done.stdout.splitlines():
        if raw.startswith("{"):
            entry = json.loads(raw)
            entries += 1
            lines += _message(entry).splitlines() or [""]
            last = entry.get("__CURSOR", last)
    notes = [f"more than {JOURNAL_MAX_ENTRIES} new entries; only the newest were read"] \
        if entries >= JOURNAL_MAX_ENTRIES else []
    return News(lines, {"cursor": _last_cursor(done.stdout) or last}, notes)


def _last_cursor(out: str) -> str:
    found = [ln[len("-- cursor: "):].strip() for ln in out.splitlines()
             if ln.startswith("-- cursor: ")]
    return found[-1] if found else ""


def _state(state_dir: Path, name: str, entry: dict[str, Any] | None = None) -> Any:
    """Trap ``name``'s saved entry; with ``entry``, save that instead. All traps share the
    file and may run at once: a lock serialises each read-modify-write."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / STATE_FILE
    with flocked(state_dir / (STATE_FILE + ".lock"), timeout=None):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):  # none or unreadable: start at the ends, as at first
            data = {}
        data = data if isinstance(data, dict) else {}
        if entry is None:
            return data.get(name, {})
        data[name] = entry
        write_atomic(path, json.dumps(data, sort_keys=True), 0o600)


def _shorten(line: str, n: int = LINE_SHOWN) -> str:
    line = "".join(c if c.isprintable() else " " for c in line).strip()
    return line if len(line) <= n else line[:n - 3] + "..."


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}es"


class LogTrapCheck(Check):
    name = "logtrap"
    Options = LogTrapOptions
    options: LogTrapOptions

    @classmethod
    def instances(cls, options: LogTrapOptions, env: Env) -> Iterable[Check]:
        return [cls(options, name) for name in options.traps or {}]

    def run(self, env: Env) -> Iterable[Result]:
        trap = (self.options.traps or {})[self.target]
        pattern = re.compile(trap["pattern"])
        kind = "file" if "file" in trap else "journal"
        source = f"{kind}:{trap[kind]}"
        where = trap["file"] if kind == "file" else (
            "the journal" if trap["journal"] == "*" else f"the journal of {trap['journal']}")
        try:
            mine = _state(env.state_dir, self.target)
        except OSError as e:
            return [self._unkept(env, e)]
        if mine.get("source") != source:  # new trap, or it now watches something else
            mine = {"source": source}
        try:
            if kind == "file":
                news = read_file_news(Path(trap["file"]), mine.get("pos"), self.options.max_read)
            else:
                cursor = mine.get("pos", {}).get("cursor") or None
                news = read_journal_news(env, trap["journal"], cursor,
                                         max(1.0, self.timeout * 0.8))
        except (OSError, CommandError, ValueError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            return [self.result(Status.UNKNOWN, f"cannot read {where}: {why}",
                                details=f"trap /{trap['pattern']}/", restartable=False)]
        hits = [ln for ln in news.lines if pattern.search(ln)]
        status, summary, details = self._judge(mine, hits, env.clock.now(), trap, where)
        mine["pos"] = news.position
        try:
            if env.keeps_state:
                _state(env.state_dir, self.target, mine)
        except OSError as e:
            return [self._unkept(env, e)]
        notes = "\n".join(news.notes)
        return [self.result(status, summary, restartable=False,
                            details="\n".join(x for x in (details, notes) if x),
                            metrics=(Metric("new_matches", len(hits), "c"),))]

    def _unkept(self, env: Env, e: OSError) -> Result:
        return self.result(Status.UNKNOWN, f"cannot keep read positions in {env.state_dir}: "
                           f"{e.strerror or e}", restartable=False)

    def _judge(self, mine: dict[str, Any], hits: list[str], now: float,
               trap: Mapping[str, Any], where: str) -> tuple[Status, str, str]:
        """Update the sticky window in ``mine`` and say what it means now."""
        interval, shown = trap["interval"], f"/{trap['pattern']}/"
        w = mine.get("window")
        if hits:
            if w is None or now >= w["last"] + interval:
                w = {"start": now, "first": len(hits), "count": 0, "recent": []}
            w["count"] += len(hits)
            w["last"] = now
            w["recent"] = (w["recent"] + [_shorten(h, 300) for h in hits])[-RECENT_KEPT:]
            mine["window"] = w
        if w is not None and now < w["last"] + interval:
            latest = _shorten(w["recent"][-1])
            if w["count"] == w["first"]:
                summary = f"{_plural(w['count'], 'new match')} of {shown} in {where}"
            else:
                since = time.strftime("%H:%M", time.localtime(w["start"]))
                summary = (f"{_plural(w['count'], 'match')} of {shown} in {where} since "
                           f"{since}, {w['count'] - w['first']} more since the first, suppressed")
            details = "latest matching lines:\n" + "\n".join(w["recent"])
            return Status[trap["status"]], f"{summary}; latest: {latest}", details
        quiet = f"{interval / 60:g} min"
        if w is not None:  # the burst is over: say how big it was, once, in the recovery
            mine.pop("window")
            return Status.OK, (f"no matches of {shown} in {where} for {quiet} "
                               f"(the last burst had {_plural(w['count'], 'match')})"), ""
        return Status.OK, f"no new matches of {shown} in {where}", ""
