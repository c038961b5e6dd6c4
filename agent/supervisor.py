"""``steward run``: the supervisor loop.

Each check runs at its own interval; results go through the Policy; the supervisor restarts
units, sends alerts, keeps state on disk and talks to systemd (READY after the first pass,
WATCHDOG only after each full pass, STATUS). Failed units are noticed through systemd's D-Bus
signals (UnitWatcher) the moment they change, so the service check runs at once instead of
systemctl being forked every second.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from agent.config import Config, ConfigError, load
from agent.env import Env
from agent.events import Event
from agent.model import Check, Result, Status
from agent.notices import Notices
from agent.notify import Actions, Outcome
from agent.policy import Policy, Restart, settle
from agent.registry import Registry
from agent.runner import plan, resolve, run_checks
from agent.sources import Source, SourceContext, guarded
from agent.sources import load as load_sources
from agent.state import StateDir
from agent.system.sdnotify import SdNotify

log = logging.getLogger(__name__)

MAX_SLEEP = 5.0  # requests (steward reset) and maintenance are seen within this
POLL_WITHOUT_DBUS = 2.0  # a unit-following check's interval without D-Bus signals


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
                 notify: Callable[[Config], Actions], state: StateDir, *,
                 watcher: Callable[[Callable[[str, str], None]], Watcher] | None = None,
                 sd: SdNotify | None = None) -> None:
        self.registry, self.config_path = registry, config_path
        self.notify, self.state = notify, state
        self.notifier: Actions | None = None
        self.sd = sd or SdNotify()
        self.clock = env.clock  # the one source of time (tests drive it)
        self.host = socket.gethostname()
        self._wake = threading.Event()
        self._stop = self._reload = False
        self._urgent: set[str] = set()
        self._lock = threading.Lock()
        self.memory = state.load_memory()
        self._saved = self.memory.essence()
        self._status_text = ""
        self._last_checks: dict[str, Any] | None = None
        self.sources: list[Source] = []  # steward.sources: the patch window, the USB monitor
        self._source_failures: list[Event] = []
        self._configure(env)
        self.sources, self._source_failures = load_sources(SourceContext(
            self.env, self.state.path, config_path, self._wake.set))
        for source in self.sources:
            guarded(source, "configure", functools.partial(source.configure, self.env))
        self.watcher = watcher(self._unit_changed) if watcher else None

    # -- configuration -----------------------------------------------------------------
    def _configure(self, env: Env) -> None:
        if self.notifier is not None:
            self.notifier.stop()  # queues what it gathered, so a reload loses no alert
        self.notifier = self.notify(env.config)
        self.env = resolve(self.registry, env)
        self.policy = Policy(self.memory, self.env.config.restart, self._tolerance)
        self.notices = Notices(self.memory, self.env.config.alerts)
        checks, early = plan(self.registry, self.env)
        now = self.clock.monotonic()
        self.jobs = [_Job(c, now) for _, c in checks]
        self.early = early  # plugins that failed to load: reported every pass
        # Units whose changes run the unit-following checks at once (Check.follows_units).
        self.followers = {j.check.name for j in self.jobs if j.check.follows_units}
        self.watched = {u for j in self.jobs if j.check.follows_units
                        for u in j.check.watched_units()}
        # A service whose daemon runs in another unit (Debian's postfix.service, an "active
        # (exited)" wrapper of postfix@-.service; a socket-activated service's .socket): its
        # name -> the unit that runs the daemon or listens for it, learnt from the
        # unit-following checks' results. That unit is watched and restarted.
        self.runs_in: dict[str, str] = {}
        self.results: dict[str, Result] = {}  # the latest of each configured check
        for source in self.sources:  # a reload: each source reads its part of the config
            guarded(source, "configure", functools.partial(source.configure, self.env))

    def _tolerance(self, check_id: str) -> tuple[int, int]:
        opts = self.env.config.checks.get(check_id.split(":", 1)[0])
        return opts.tolerance if opts is not None else (1, 1)

    def _try_reload(self) -> None:
        try:
            config = load(self.config_path, self.registry.checks, self.registry.broken_checks)
        except ConfigError as e:
            log.error("config reload failed, still running with the previous config: %s", e)
            self._send([Event("config", "config", Status.WARN,
                              "new config rejected; still running with the previous one",
                              details=str(e), remedy="fix it (steward config check), then "
                              "systemctl reload steward", since=self.clock.now())])
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
            log.debug("unit %s is now %s: %s run now", unit_id, active_state,
                      ", ".join(sorted(self.followers)))
            with self._lock:
                self._urgent |= self.followers
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
        self._notifier().start()
        log.info("steward run: %d checks, state in %s", len(self.jobs), self.state.path)
        try:
            self._send(self._source_failures)
            for source in self.sources:
                self._send(guarded(source, "start", source.start))
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
            for source in self.sources:
                guarded(source, "stop", source.stop)
        log.info("steward run: stopped")
        return 0

    def _sleep_time(self) -> float:
        mono = self.clock.monotonic()
        nearest = min((j.next_due for j in self.jobs), default=mono + MAX_SLEEP)
        limit = min(MAX_SLEEP, self.sd.watchdog_interval or MAX_SLEEP)
        return max(0.0, min(nearest - mono, limit))

    def _interval(self, check: Check) -> float:
        if check.follows_units and not (self.watcher and self.watcher.connected):
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
                    j.next_due = min(j.next_due, self.clock.monotonic())
        mono = self.clock.monotonic()
        with self._lock:
            urgent, self._urgent = self._urgent, set()
        due = [j for j in self.jobs if j.next_due <= mono or j.check.name in urgent]
        results = run_checks([j.check for j in due], self.env) if due else []
        after = self.clock.monotonic()
        for j in due:
            j.rechecks = [t for t in j.rechecks if t > after]
            j.next_due = min([after + self._interval(j.check), *j.rechecks])
        results = self._follow(results)
        results += self.early if due else []
        results += self._notifier().results()  # an action that failed, hangs or is missing
        now = self.clock.now()  # after the checks, which may take up to their timeouts
        self.results.update((r.check, r) for r in results)
        events, restarts = self.policy.evaluate(results, now, self.state.maintenance())
        for rs in restarts:
            events += self._restart(rs, now)
        for source in self.sources:
            events += guarded(source, "tick", functools.partial(source.tick, now))
        self._send(events, now)
        self._tell(self.notices.later(now, self.memory.checks))
        # a copy: the actions read it in their threads while the next pass changes it
        self._notifier().tick(now, {k: replace(v) for k, v in self.memory.checks.items()})
        self._notifier().drain()  # the events are the actions' (a mail on disk) before the
        self._persist()  # state says they were sent
        self.sd.send(watchdog="1", status=self._status_text)

    def _follow(self, results: list[Result]) -> list[Result]:
        """Results linked to a service whose daemon runs in another unit are linked to that
        unit instead (restarting a wrapper that is "active (exited)" restarts nothing, or
        everything); their dependency stays the service the administrator knows."""
        def following(r: Result) -> bool:
            return r.check.split(":", 1)[0] in self.followers

        for r in results:
            if following(r) and r.unit and ":" in r.check:
                name = r.check.split(":", 1)[1]
                if r.unit != name:
                    self.runs_in[name] = r.unit
                else:
                    self.runs_in.pop(name, None)
        return [replace(r, unit=self.runs_in[r.unit]) if r.unit in self.runs_in and
                not following(r) else r for r in results]

    def _restart(self, rs: Restart, now: float) -> list[Event]:
        """The restart action (steward.actions ``restart``) carries the decision out."""
        remedy = self._notifier().remedies.get("restart")
        if remedy is None:  # reported as the UNKNOWN result action:restart
            return []
        try:
            done = remedy.carry_out(rs, self.env)
        except Exception as e:  # a broken action must not stop supervision
            log.exception("action restart failed")
            done = Outcome(f"restart {rs.unit}", error=f"{type(e).__name__}: {e}")
        if done.declined:
            log.info("%s: %s", rs.unit, done.declined)
            return []
        log.warning("%s: %s%s", rs.unit, done.action,
                    f" failed: {done.error}" if done.error else "")
        mono, opts = self.clock.monotonic(), self.env.config.restart
        for j in self.jobs:  # judge the unit again once it has settled and when grace ends
            if j.check.follows_units or j.check.id == rs.check:
                j.rechecks += [mono + settle(opts) + 0.05, mono + opts.grace]
                j.next_due = min(j.next_due, *j.rechecks)
        return self.policy.restarted(rs, now, done.error, done.action)

    def _notifier(self) -> Actions:
        assert self.notifier is not None  # set by _configure in __init__
        return self.notifier

    def _send(self, events: list[Event], now: float | None = None) -> None:
        """What the policy and the sources announce, as far as the notices policy tells it."""
        self._tell(self.notices.decide(events, self.clock.now() if now is None else now))

    def _tell(self, events: list[Event]) -> None:
        for e in events:  # each action takes them in its own thread (agent.notify)
            self._notifier().send(e, self.host)

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
        now = self.clock.now()
        maint = self.state.maintenance()
        checks = {}
        for cid, rec in sorted(self.memory.checks.items()):
            if cid not in self.results:
                continue  # no longer configured
            checks[cid] = {"status": rec.status.name, "since": rec.since, "summary": rec.summary,
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
        found: dict[str, Any] = {"pid": os.getpid(), "config": self.env.config.source,
                                 "watch": watch}
        for source in self.sources:  # e.g. "patch": the next window
            try:
                part = source.status()
            except Exception:  # a broken source must not stop supervision
                log.exception("source %s: status failed", source.name)
                continue
            if part is not None:
                found[source.name] = dict(part)
        found.update({"maintenance": {"until": maint.until, "units": maint.units,
                                      "active": maint.active(now)},
                      "checks": checks, "units": units})
        return found


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
