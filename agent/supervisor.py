"""``steward run``: the supervisor loop.

Each check runs at its own interval; results go through the Policy; the supervisor restarts
units, sends alerts, keeps state on disk and talks to systemd (READY after the first pass,
WATCHDOG only after each full pass, STATUS). Failed units are noticed through systemd's D-Bus
signals (UnitWatcher) the moment they change, so the service check runs at once instead of
systemctl being forked every second.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from agent.config import Config, ConfigError, load
from agent.env import Env
from agent.model import Check, Result, Status
from agent.notify import Notifier
from agent.policy import Alert, Policy, Restart, settle
from agent.registry import Registry
from agent.runner import plan, resolve, run_checks
from agent.state import StateDir
from agent.system.commands import CommandError
from agent.system.sdnotify import SdNotify

log = logging.getLogger(__name__)

MAX_SLEEP = 5.0  # requests (steward reset) and maintenance are seen within this
POLL_WITHOUT_DBUS = 2.0  # the service check's interval when D-Bus signals are unavailable


class Watcher(Protocol):
    connected: bool
    error: str

    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass
class _Job:
    check: Check
    next_due: float  # monotonic
    # runs wanted early (monotonic): when a restart has settled and when its grace ends
    rechecks: list[float] = field(default_factory=list)


class Supervisor:
    def __init__(self, registry: Registry, env: Env, config_path: Path | None,
                 notify: Callable[[Config], Notifier], state: StateDir, *,
                 watcher: Callable[[Callable[[str, str], None]], Watcher] | None = None,
                 sd: SdNotify | None = None) -> None:
        self.registry, self.config_path = registry, config_path
        self.notify, self.state = notify, state
        self.notifier: Notifier | None = None
        self.sd = sd or SdNotify()
        self.host = socket.gethostname()
        self._wake = threading.Event()
        self._stop = self._reload = False
        self._urgent: set[str] = set()
        self._lock = threading.Lock()
        self.memory = state.load_memory()
        self._saved = self.memory.essence()
        self._status_text = ""
        self._last_checks: dict[str, Any] | None = None
        self.patcher: Any = None  # patch.window.PatchScheduler while [patch] schedule is set
        self.usb: Any = None  # usbimage.monitor.DriveMonitor: steward drives plugged in
        self._configure(env)
        self.watcher = watcher(self._unit_changed) if watcher else None

    # -- configuration -----------------------------------------------------------------
    def _configure(self, env: Env) -> None:
        if self.notifier is not None:
            self.notifier.stop()  # queues what it gathered, so a reload loses no alert
        self.notifier = self.notify(env.config)
        self.env = resolve(self.registry, env)
        self.policy = Policy(self.memory, self.env.config.restart, self._tolerance)
        checks, early = plan(self.registry, self.env)
        now = time.monotonic()
        self.jobs = [_Job(c, now) for _, c in checks]
        self.early = early  # plugins that failed to load: reported every pass
        service = self.env.config.checks.get("service")
        self.watched = set(getattr(service, "units", None) or ())
        # A service whose daemon runs in another unit (Debian's postfix.service, an "active
        # (exited)" wrapper of postfix@-.service; a socket-activated service's .socket): its
        # name -> the unit that runs the daemon or listens for it, learnt from the service
        # check's results. That unit is watched and restarted.
        self.runs_in: dict[str, str] = {}
        self.results: dict[str, Result] = {}  # the latest of each configured check
        opts = self.env.config.patch
        if opts.parsed_schedule is None:
            self.patcher = None
        elif self.patcher is None or self.patcher.options != opts:  # a reload keeps its draw
            from patch.window import PatchScheduler  # loads only with a window

            argv = [sys.executable, "-m", "agent", "patch", "apply",
                    "--state-dir", str(self.state.path)]
            if self.config_path is not None:
                argv += ["--config", str(Path(self.config_path).absolute())]
            self.patcher = PatchScheduler(opts, self.state.path, self.env.commands,
                                          clock=self.env.clock, argv=argv)
        if self.usb is None:
            from usbimage.monitor import DriveMonitor

            argv = [sys.executable, "-m", "agent", "backup", "create", "--usb",
                    "--state-dir", str(self.state.path)]
            if self.config_path is not None:
                argv += ["--config", str(Path(self.config_path).absolute())]
            self.usb = DriveMonitor(self.env.config.usb, self.env.commands, argv,
                                    wake=self._wake.set, state_dir=self.state.path)
        self.usb.options = self.env.config.usb  # a reload changes what an insertion does

    def _tolerance(self, check_id: str) -> tuple[int, int]:
        opts = self.env.config.checks.get(check_id.split(":", 1)[0])
        return opts.tolerance if opts is not None else (1, 1)

    def _try_reload(self) -> None:
        try:
            config = load(self.config_path, self.registry.checks, self.registry.broken_checks)
        except ConfigError as e:
            log.error("config reload failed, still running with the previous config: %s", e)
            self._send([Alert("config", "config", Status.WARN,
                              "new config rejected; still running with the previous one",
                              details=str(e), remedy="fix it (steward config check), then "
                              "systemctl reload steward", since=time.time())])
            return
        self._configure(replace(self.env, config=config))
        self._notifier().start()
        log.info("config reloaded from %s: %d checks", config.source, len(self.jobs))

    # -- events from other threads and signals -------------------------------------------
    def _unit_changed(self, unit_id: str, active_state: str) -> None:
        name = unit_id.removesuffix(".service")
        watched = self.watched | set(self.runs_in.values())
        templates = tuple(w for w in self.watched if w.endswith("@"))  # their instances
        if not unit_id or name in watched or unit_id in watched or \
                (templates and name.startswith(templates)):
            log.debug("unit %s is now %s: service check runs now", unit_id, active_state)
            with self._lock:
                self._urgent.add("service")
            self._wake.set()

    def _signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True
        self._wake.set()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._signal)
        if self.watcher:
            self.watcher.start()
        self.usb.start()
        self._notifier().start()
        log.info("steward run: %d checks, state in %s", len(self.jobs), self.state.path)
        try:
            self._send(self._after_patch_reboot())
            self.run_pass()
            self.sd.send(ready="1", status=self._status_text)
            while not self._stop:
                self._wake.wait(self._sleep_time())
                self._wake.clear()
                if self._stop:
                    break
                if self._reload:
                    self._reload = False
                    self._try_reload()
                self.run_pass()
        finally:
            self.sd.send(stopping="1")
            self._notifier().stop()
            if self.watcher:
                self.watcher.stop()
            self.usb.stop()
        log.info("steward run: stopped")
        return 0

    def _sleep_time(self) -> float:
        nearest = min((j.next_due for j in self.jobs), default=time.monotonic() + MAX_SLEEP)
        limit = min(MAX_SLEEP, self.sd.watchdog_interval or MAX_SLEEP)
        return max(0.0, min(nearest - time.monotonic(), limit))

    def _interval(self, check: Check) -> float:
        if check.name == "service" and not (self.watcher and self.watcher.connected):
            return min(check.options.interval, POLL_WITHOUT_DBUS)
        return check.options.interval

    def run_pass(self) -> None:
        """One full pass: requests, due checks, policy, actions, alerts, state, watchdog."""
        for unit in self.state.take_requests():
            known = self.policy.reset(unit)
            log.warning("reset of %s requested: restart budget and escalation %s", unit,
                        "cleared" if known else "were already clear")
            if known:  # the unit may be down now: judged in this pass, not at the next interval
                for j in self.jobs:
                    j.next_due = min(j.next_due, time.monotonic())
        mono = time.monotonic()
        with self._lock:
            urgent, self._urgent = self._urgent, set()
        due = [j for j in self.jobs if j.next_due <= mono or j.check.name in urgent]
        results = run_checks([j.check for j in due], self.env) if due else []
        after = time.monotonic()
        for j in due:
            j.rechecks = [t for t in j.rechecks if t > after]
            j.next_due = min([after + self._interval(j.check), *j.rechecks])
        results = self._follow(results)
        results += self.early if due else []
        now = time.time()  # after the checks, which may take up to their timeouts
        self.results.update((r.check, r) for r in results)
        alerts, restarts = self.policy.evaluate(results, now, self.state.maintenance())
        for rs in restarts:
            alerts += self._restart(rs, now)
        alerts += self._patch_window(now)
        alerts += self.usb.alerts(now)
        self._send(alerts)
        self._notifier().tick(now, self.memory.checks)
        self._persist()
        self.sd.send(watchdog="1", status=self._status_text)

    def _follow(self, results: list[Result]) -> list[Result]:
        """Results linked to a service whose daemon runs in another unit are linked to that
        unit instead (restarting a wrapper that is "active (exited)" restarts nothing, or
        everything); their dependency stays the service the administrator knows."""
        for r in results:
            if r.check.startswith("service:") and r.unit:
                name = r.check.split(":", 1)[1]
                if r.unit != name:
                    self.runs_in[name] = r.unit
                else:
                    self.runs_in.pop(name, None)
        return [replace(r, unit=self.runs_in[r.unit]) if r.unit in self.runs_in and
                not r.check.startswith("service:") else r for r in results]

    def _patch_window(self, now: float) -> list[Alert]:
        """Start ``steward patch apply`` as its own transient unit when the window opens;
        a window missed or given up is an alert (the apply mails its own report)."""
        if self.patcher is None:
            return []
        try:
            events = self.patcher.tick()
        except Exception:  # a broken patch window must not stop supervision
            log.exception("patch window failed")
            return []
        for e in events:
            log.info("patch window: %s%s", e.summary, f" ({e.detail})" if e.detail else "")
        return [Alert("patch", "patch:window", Status.CRIT if e.kind == "gave-up" else
                      Status.WARN, e.summary, details=e.detail,
                      remedy="journalctl -u 'steward-patch-*'; steward patch apply by hand",
                      since=now) for e in events if e.alert]

    def _after_patch_reboot(self) -> list[Alert]:
        """At start: did the reboot a patch run asked for happen? (Health after it is the
        first pass, whose problems are alerts of their own.)"""
        if not (self.state.path / "patch" / "reboot.json").exists():
            return []
        from patch.rebooting import after_reboot

        try:
            news = after_reboot(self.state.path)
        except Exception:
            log.exception("cannot read the patch reboot marker")
            return []
        if news is None:
            return []
        return [Alert("patch", "patch:reboot", Status.OK if news.happened else Status.CRIT,
                      news.summary, remedy="" if news.happened else
                      "reboot in the next maintenance window: systemctl reboot",
                      since=time.time())]

    def _restart(self, rs: Restart, now: float) -> list[Alert]:
        systemd = self.env.systemd
        try:
            [st] = systemd.show([rs.unit])
            if st.active_state == "activating" and st.sub_state == "auto-restart":
                log.info("%s: systemd is restarting it already; leaving it to systemd", rs.unit)
                return []
            if st.start_limit_hit:
                # systemd gave up after its own restarts; say so, then try once more ourselves.
                action = systemd.reset_failed(rs.unit) + " (start limit hit) && " + \
                    systemd.start(rs.unit)
            else:
                action = systemd.restart(rs.unit)
            error = ""
        except CommandError as e:
            action, error = f"restart {rs.unit}", str(e)
        log.warning("%s: %s%s", rs.unit, action, f" failed: {error}" if error else "")
        mono, opts = time.monotonic(), self.env.config.restart
        for j in self.jobs:  # judge the unit again once it has settled and when grace ends
            if j.check.name == "service" or j.check.id == rs.check:
                j.rechecks += [mono + settle(opts) + 0.05, mono + opts.grace]
                j.next_due = min(j.next_due, *j.rechecks)
        return self.policy.restarted(rs, now, error, action)

    def _notifier(self) -> Notifier:
        assert self.notifier is not None  # set by _configure in __init__
        return self.notifier

    def _send(self, alerts: list[Alert]) -> None:
        for a in alerts:
            try:
                self._notifier().send(a, self.host)
            except Exception:  # a broken notifier must not stop supervision
                log.exception("notifier failed for %s", a.check)

    def _persist(self) -> None:
        essence = self.memory.essence()
        if essence != self._saved:
            self.state.save_memory(self.memory)
            self._saved = essence
        status = self.status()
        text = status_line(status)
        if text != self._status_text or status["checks"] != self._last_checks:
            self.state.write_status(status)
            self._status_text, self._last_checks = text, status["checks"]

    def status(self) -> dict[str, Any]:
        now = time.time()
        maint = self.state.maintenance()
        checks = {}
        for cid, rec in sorted(self.memory.checks.items()):
            if cid not in self.results:
                continue  # no longer configured
            checks[cid] = {"status": rec.status, "since": rec.since, "summary": rec.summary,
                           "remedy": self.results[cid].remedy, "unit": rec.unit,
                           "inhibited_by": rec.inhibited_by,
                           "maintenance": maint.covers(rec.unit, now)}
        units = {name: {"restarts": len([t for t in u.restarts
                                         if now - t < self.env.config.restart.window]),
                        "budget": self.env.config.restart.budget, "escalated": u.escalated,
                        "last_action": u.last_action}
                 for name, u in sorted(self.memory.units.items())}
        watch = "D-Bus signals" if self.watcher and self.watcher.connected else \
            f"polling every {POLL_WITHOUT_DBUS:g} s" + (
                f" ({self.watcher.error})" if self.watcher and self.watcher.error else "")
        patch = self.patcher.status() if self.patcher is not None else {"schedule": None}
        return {"pid": os.getpid(), "config": self.env.config.source, "watch": watch,
                "patch": patch,
                "maintenance": {"until": maint.until, "units": maint.units,
                                "active": maint.active(now)},
                "checks": checks, "units": units}


def status_line(status: dict[str, Any]) -> str:
    """The one line systemd shows as the service's Status."""
    checks = status["checks"]
    bad = [f"{cid} {c['status']}" for cid, c in checks.items() if c["status"] != "OK"]
    escalated = [u for u, r in status["units"].items() if r["escalated"]]
    text = f"{len(checks)} checks, {len(checks) - len(bad)} OK"
    if bad:
        text += "; " + ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    if escalated:
        text += "; gave up restarting " + ", ".join(escalated)
    if status["maintenance"]["active"]:
        text += "; maintenance on"
    return text
