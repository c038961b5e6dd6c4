"""Runs checks concurrently, each under its own timeout, and never lets one sink the rest.

An exception becomes UNKNOWN with the reason; an overrun becomes UNKNOWN "timed out after N s"
and its thread is abandoned (daemon), so wall time is bounded by the slowest timeout.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent.env import Env
from agent.model import Check, Result, Status, worst
from agent.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selector:
    """``--only`` / ``--skip``: names or globs matched against plugin names and check ids."""

    only: Sequence[str] = ()
    skip: Sequence[str] = ()

    @staticmethod
    def _hit(patterns: Sequence[str], *names: str) -> bool:
        return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)

    def may_run(self, plugin: str, check_id: str) -> bool:
        if self._hit(self.skip, plugin, check_id):
            return False
        if not self.only:
            return True
        if self._hit(self.only, plugin, check_id):
            return True
        # A pattern naming a result ("service:postfix", "maildns:example.com:spf") selects the
        # instance whose results it may match, so that instance must run: the pattern matches
        # the instance id followed by one of its own ":"-tails. "disk:/var" does not select
        # "disk:/", since "disk:/:/var" is not "disk:/var".
        return any(fnmatch.fnmatchcase(f"{check_id}:{tail}", p)
                   for p in self.only for tail in _tails(p))

    def wants(self, plugin: str, result_id: str) -> bool:
        # A result is selected by its own id or by that of the instance that gave it (a
        # ":"-prefix: "maildns:example.com" gives "maildns:example.com:spf").
        parts = result_id.split(":")
        names = [plugin, *(":".join(parts[:i]) for i in range(2, len(parts) + 1))]
        if self._hit(self.skip, *names):
            return False
        return not self.only or self._hit(self.only, *names)


def _tails(pattern: str) -> list[str]:
    """What follows each ":" of ``pattern``: "a:b:c" -> ["b:c", "c"]."""
    parts = pattern.split(":")
    return [":".join(parts[i:]) for i in range(1, len(parts))]


@dataclass(frozen=True)
class Report:
    results: tuple[Result, ...]
    started: float  # wall clock
    duration: float  # seconds

    @property
    def status(self) -> Status:
        return worst(r.status for r in self.results)

    def ordered(self) -> list[Result]:
        """Worst first, then by check id: the order a person wants to read."""
        return sorted(self.results, key=lambda r: (-r.status.severity, r.check))

    def counts(self) -> dict[Status, int]:
        return {s: sum(r.status is s for r in self.results) for s in Status}


def unknown(check_id: str, summary: str, details: str = "", remedy: str = "") -> Result:
    return Result(check_id, Status.UNKNOWN, summary, details=details, remedy=remedy)


def plan(registry: Registry, env: Env, selector: Selector = Selector()
         ) -> tuple[list[tuple[str, Check]], list[Result]]:
    """The check instances to run (with their plugin name) and results known beforehand:
    plugins that failed to load, and plugins whose ``instances`` raised."""
    checks: list[tuple[str, Check]] = []
    early: list[Result] = []
    for key, reason in sorted(registry.failures.items()):
        kind, _, name = key.partition(":")
        if kind == "check" and selector.may_run(name, name):
            early.append(unknown(name, f"check plugin {name!r} failed to load", reason,
                                 "reinstall steward or remove the plugin's package"))
    for name, cls in sorted(registry.checks.items()):
        opts = env.config.checks.get(name)
        if opts is None or not opts.enabled or not selector.may_run(name, name):
            continue
        try:
            found = list(cls.instances(opts, env))
        except Exception as e:
            log.exception("check %s could not plan its instances", name)
            early.append(unknown(name, f"could not set up: {type(e).__name__}: {e}"))
            continue
        checks.extend((name, c) for c in found if selector.may_run(name, c.id))
    return checks, early


class _Slot:
    def __init__(self, check: Check) -> None:
        self.check = check
        self.done = threading.Event()
        self.results: list[Result] = []
        self.started = time.monotonic()
        self.deadline = self.started + check.timeout
        self.duration = 0.0

    def __call__(self, env: Env) -> None:
        try:
            out = self.check.run(env)
            got = list(out) if out is not None else []
            bad = [r for r in got if not isinstance(r, Result)]
            if bad:
                raise TypeError(f"returned {type(bad[0]).__name__}, not Result")
            self.results = got
        except Exception as e:
            log.debug("check %s raised", self.check.id, exc_info=True)
            self.results = [unknown(self.check.id, f"check failed: {type(e).__name__}: {e}")]
        finally:
            self.duration = time.monotonic() - self.started
            self.done.set()


def run_checks(checks: Iterable[Check], env: Env) -> list[Result]:
    slots = [_Slot(c) for c in checks]
    for slot in slots:
        threading.Thread(target=slot, args=(env,), name=f"check {slot.check.id}",
                         daemon=True).start()
    out: list[Result] = []
    for slot in sorted(slots, key=lambda s: s.deadline):
        extra = slot.check.options.depends_on
        if slot.done.wait(max(0.0, slot.deadline - time.monotonic())):
            out.extend(dataclasses.replace(r, duration=round(slot.duration, 4),
                                           depends_on=r.depends_on + extra)
                       for r in slot.results)
        else:
            log.warning("check %s overran its %s s timeout", slot.check.id, slot.check.timeout)
            out.append(dataclasses.replace(
                unknown(slot.check.id, f"timed out after {slot.check.timeout:g} s"),
                duration=round(time.monotonic() - slot.started, 4), depends_on=extra))
    return out


def run_all(registry: Registry, env: Env, selector: Selector = Selector()) -> Report:
    started, t0 = env.clock.now(), time.monotonic()
    planned, early = plan(registry, env, selector)
    results = run_checks((c for _, c in planned), env)
    kept = [r for r in early + results if selector.wants(r.check.split(":", 1)[0], r.check)]
    return Report(tuple(kept), started, time.monotonic() - t0)


def resolve(registry: Registry, env: Env, selector: Selector = Selector()) -> Env:
    """An Env whose config has each selected plugin's discovered defaults filled in."""
    checks = dict(env.config.checks)
    order = sorted(registry.checks.items(), key=lambda kv: (kv[1].resolve_order, kv[0]))
    for name, cls in order:
        opts = checks.get(name)
        # Plugins others build on (resolve_order 0: the services) resolve even when not
        # selected, so --only port still knows which services' ports to probe.
        if opts is None or not opts.enabled or (
                cls.resolve_order and not selector.may_run(name, name)):
            continue
        current = dataclasses.replace(env, config=dataclasses.replace(env.config, checks=checks))
        checks[name] = cls.resolve(opts, current)
    return dataclasses.replace(env, config=dataclasses.replace(env.config, checks=checks))
