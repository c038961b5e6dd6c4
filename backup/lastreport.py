"""What the last backup did and what the running one has done so far, as files in the state dir
that ``steward backup last`` reads (and the Cockpit page through it): ``backup/last-report.json``
written once at the end of every ``steward backup create`` (folder or USB, committed or not),
``backup/progress.json`` rewritten at most every 0.5 s while one runs, removed at its end.
Both are written atomically: a reader sees the old document or the new one, never half."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import UsageError
from agent.fileio import write_atomic

if TYPE_CHECKING:
    from backup.create import Outcome

REPORT = "backup/last-report.json"
PROGRESS = "backup/progress.json"
SCHEMA_VERSION = 1
LISTED = 50  # files that changed while read, warnings: the first ones only (all: the manifest)


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Run:
    """One ``steward backup create``: what the report says besides the generation."""

    kind: str  # folder | usb
    source: str
    started: float
    target: str = ""
    drive: str | None = None


def report(run: Run, finished: float, code: int, outcome: Outcome | None, *,
           errors: Sequence[str], text: str) -> dict[str, Any]:
    """The last-report.json document (backup-report.schema.json)."""
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "kind": run.kind, "ok": code == 0 and not errors,
        "exit_code": code, "host": socket.gethostname(), "source": run.source,
        "target": run.target, "drive": run.drive, "started": _utc(run.started),
        "finished": _utc(finished), "duration_s": round(max(0.0, finished - run.started), 3),
        "generation": None, "entries": None, "bytes": None, "stored": None, "written": None,
        "segments": None, "reused_segments": None, "verified": False,
        "changed_count": 0, "changed": [], "warnings_count": 0, "warnings": [],
        "dropped": [], "errors": list(errors), "text": text}
    if outcome is not None:
        m, t = outcome.manifest, outcome.manifest["totals"]
        moved = m.get("changed", [])
        doc.update(generation=outcome.generation.id, entries=t["entries"], bytes=t["bytes"],
                   stored=t["stored"], written=t["written"], segments=len(m["segments"]),
                   reused_segments=t["reused_segments"],
                   verified=True,  # committed only once read back and compared
                   changed_count=int(t.get("changed", len(moved))),
                   changed=[{"path": c["path"], "how": c["how"]} for c in moved[:LISTED]],
                   warnings_count=len(m["warnings"]), warnings=list(m["warnings"][:LISTED]),
                   dropped=list(outcome.dropped))
    return doc


def write_report(state_dir: Path, doc: dict[str, Any]) -> Path:
    path = Path(state_dir) / REPORT
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, json.dumps(doc, indent=1) + "\n", 0o600)
    return path


class Progress:
    """``backup/progress.json`` for one run: ``phase`` (starting, writing, finishing) and the
    numbers backup.progress hands its sink; removed when the run ends."""

    def __init__(self, state_dir: Path, run: Run, clock: Any) -> None:
        self.path = Path(state_dir) / PROGRESS
        self.run, self.clock = run, clock
        self.doc: dict[str, Any] = {
            "pid": os.getpid(), "kind": run.kind, "source": run.source, "target": run.target,
            "drive": run.drive, "started": _utc(run.started), "phase": "starting",
            "bytes": 0, "files": 0, "total_bytes": 0, "total_files": 0}

    def write(self, **changes: Any) -> None:
        self.doc.update(changes, updated=_utc(self.clock.now()))
        write_atomic(self.path, json.dumps(self.doc) + "\n", 0o600, durable=False)

    def sink(self, numbers: dict[str, Any]) -> None:
        self.write(phase="finishing" if numbers["done"] else "writing",
                   **{k: numbers[k] for k in ("bytes", "files", "total_bytes", "total_files")})

    @contextlib.contextmanager
    def kept(self) -> Iterator[Progress]:
        """The file exists for the block (a failure to write it is no reason to stop a
        backup: the page then shows no progress), and is gone after it."""
        from backup import progress

        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.write()
        try:
            with progress.reporting(self.sink):
                yield self
        finally:
            with contextlib.suppress(OSError):
                self.path.unlink()


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read(state_dir: Path) -> dict[str, Any]:
    """{"report": the last report or None, "progress": the running backup's or None}; a report
    file that is not a report is a UsageError naming it (exit 2), never a traceback."""
    path = Path(state_dir) / REPORT
    doc: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "report": None, "progress": None,
                           "report_file": str(path)}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = None
    except OSError as e:
        raise UsageError(f"{path}: cannot be read: {e.strerror or e}") from None
    if text is not None:
        try:
            rep = json.loads(text)
        except ValueError as e:
            raise UsageError(f"{path}: not JSON ({e}); the next backup rewrites it") from None
        missing = [k for k in ("kind", "ok", "started", "finished", "errors")
                   if not isinstance(rep, dict) or k not in rep]
        if missing:
            raise UsageError(f"{path}: not a backup report (no {', '.join(missing)}); the next "
                             "backup rewrites it") from None
        doc["report"] = rep
    with contextlib.suppress(OSError, ValueError):
        prog = json.loads((Path(state_dir) / PROGRESS).read_text(encoding="utf-8"))
        # A progress file whose backup is gone (killed, the machine rebooted) is not progress.
        if isinstance(prog, dict) and _alive(prog.get("pid")):
            doc["progress"] = prog
    return doc


def text(doc: dict[str, Any]) -> str:
    """``steward backup last`` for people."""
    from backup.progress import human

    lines = []
    prog = doc["progress"]
    if prog is not None:
        total = f" of ~{human(prog['total_bytes'])}" if prog["total_bytes"] else ""
        lines.append(f"a backup is running (pid {prog['pid']}, since {prog['started']}, "
                     f"{prog['phase']}): {human(prog['bytes'])}{total}, {prog['files']} "
                     "files so far")
    rep = doc["report"]
    if rep is None:
        lines.append(f"no backup has finished on this machine yet ({doc['report_file']} does "
                     "not exist)")
    else:
        state = "OK" if rep["ok"] else "FAILED" if rep.get("generation") is None else \
            "committed, with problems"
        lines.append(f"last backup ({rep['kind']}, {rep['started']} to {rep['finished']}): "
                     f"{state}")
        lines += ["  " + line for line in str(rep.get("text", "")).splitlines()]
    return "\n".join(lines) + "\n"
