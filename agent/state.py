"""steward's state directory (default /var/lib/steward): small JSON files, written atomically.

- state.json        what ``steward run`` must remember across restarts (policy Memory)
- status.json       what the daemon sees now, for ``steward status``
- maintenance.json  maintenance mode, written by ``steward maintenance``
- requests/         one file per request to the daemon (``steward reset UNIT``)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from agent.fileio import write_atomic
from agent.memory import Maintenance, Memory
from agent.system.clock import Clock

log = logging.getLogger(__name__)


class StateError(Exception):
    """The state directory cannot be used (permissions, not a directory...)."""


class StateDir:
    def __init__(self, path: Path, clock: Clock | None = None) -> None:
        self.path = Path(path)
        self.clock = clock or Clock()  # dates a broken file kept aside
        self._maint_stamp: tuple[int, int] | None = None
        self._maint = Maintenance()

    def ensure(self) -> None:
        try:
            (self.path / "requests").mkdir(parents=True, exist_ok=True, mode=0o700)
            self.path.chmod(0o700)
        except OSError as e:
            raise StateError(f"state directory {self.path}: {e.strerror}") from None

    def _read(self, name: str) -> Any:
        try:
            return json.loads((self.path / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            bad = self.path / f"{name}.corrupt-{int(self.clock.now())}"
            log.error("%s is unreadable (%s); keeping it as %s and starting afresh",
                      self.path / name, e, bad)
            os.replace(self.path / name, bad)
            return None

    def _write(self, name: str, data: Any, durable: bool = True) -> None:
        write_atomic(self.path / name, json.dumps(data, indent=1, sort_keys=True) + "\n", 0o600,
                     durable)

    def load_memory(self) -> Memory:
        data = self._read("state.json")
        try:
            return Memory.from_dict(data) if data else Memory()
        except (TypeError, KeyError, AttributeError) as e:  # an incompatible version's
            log.error("state.json does not fit this version (%s); starting afresh", e)
            return Memory()

    def save_memory(self, memory: Memory) -> None:
        self._write("state.json", memory.to_dict())

    def write_status(self, status: dict[str, Any]) -> None:
        # What the daemon sees now: rewritten as summaries change, rebuilt after a crash.
        self._write("status.json", status, durable=False)

    def read_status(self) -> dict[str, Any] | None:
        data = self._read("status.json")
        return data if isinstance(data, dict) else None

    def maintenance(self) -> Maintenance:
        """Maintenance as last written; re-read only when the file changed."""
        try:
            st = (self.path / "maintenance.json").stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._maint_stamp:
            data = self._read("maintenance.json") if stamp else None
            self._maint = Maintenance(data.get("until"), dict(data.get("units", {}))) \
                if isinstance(data, dict) else Maintenance()
            self._maint_stamp = stamp
        return self._maint

    def set_maintenance(self, m: Maintenance) -> None:
        self._write("maintenance.json", {"until": m.until, "units": m.units})

    def request_reset(self, unit: str) -> Path:
        path = self.path / "requests" / f"reset-{unit}"
        write_atomic(path, unit + "\n", 0o600)
        return path

    def take_requests(self) -> list[str]:
        """Units whose reset was requested; each request is consumed."""
        units = []
        try:
            entries = list(os.scandir(self.path / "requests"))
        except FileNotFoundError:
            return []
        for e in entries:
            if e.name.startswith("reset-"):
                units.append(e.name[len("reset-"):])
                os.unlink(e.path)
        return units
