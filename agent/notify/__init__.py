"""How steward acts: the actions of the ``steward.actions`` entry-point group (restart, the
journal, e-mail, the webhook, a third party's).

An entry point names a class with ``name``, ``Options`` (its config table's dataclass, with
``TABLE``, e.g. "notify.webhook"; None for none) and ``create(options, state_dir, host)``
returning the action, or None while it is not configured:

    # setup.cfg / pyproject.toml of any package
    steward.actions =
        pager = hello.pager:PagerAction

Most actions are Notifiers: every event the policy decides to tell reaches each whose route
(``[alerts] route``) takes it, in the action's own thread. The supervisor waits for them at most
``DRAIN`` s a pass, so an action that raises, hangs (a call longer than ``[alerts]
action_timeout``) or fails to load is reported (an UNKNOWN result ``action:<name>`` and a
journal line) and never stops the loop or the other actions. An action with ``carry_out``
is a Remedy instead: the supervisor hands it the policy's restart decisions, one at a time,
and tells the policy how each went.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.config import Config
from agent.config.sections import Route
from agent.entrypoints import entry_points
from agent.env import Env
from agent.events import Event
from agent.memory import CheckRecord
from agent.model import Result, Status
from agent.policy import Restart

log = logging.getLogger("steward.alert")
GROUP = "steward.actions"
DRAIN = 5.0  # seconds a pass waits for the actions to take its events (on disk, for mail)


class Notifier(Protocol):
    def send(self, event: Event, host: str) -> None: ...
    def tick(self, now: float, checks: Mapping[str, CheckRecord]) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass(frozen=True)
class Outcome:
    action: str  # what was run, as the administrator would type it
    error: str = ""  # why it failed; empty when it worked
    declined: str = ""  # why nothing was done (systemd restarts it already)


class Remedy(Protocol):
    def carry_out(self, request: Restart, env: Env) -> Outcome: ...


class Guarded:
    """One action behind a queue and a thread of its own."""

    def __init__(self, name: str, notifier: Notifier, timeout: float = 30.0) -> None:
        self.name, self.notifier, self.timeout = name, notifier, timeout
        self.calls: queue.Queue[tuple[str, tuple[Any, ...]] | None] = queue.Queue()
        self.busy: tuple[str, float] | None = None  # the call running, since (monotonic)
        self.error = ""
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name=f"action {name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self.calls.get()
            if item is None:
                return
            what, args = item
            self.busy = (what, time.monotonic())
            try:
                getattr(self.notifier, what)(*args)
                if what == "send" or self.error.startswith(what):
                    self.error = ""  # what failed works again
            except Exception as e:  # an action's bug is reported, never the loop's end
                log.exception("action %s: %s failed", self.name, what)
                self.error = f"{what} raised {type(e).__name__}: {e}"
            finally:
                self.busy = None
                if self.calls.empty():
                    self._idle.set()

    def call(self, what: str, *args: Any) -> None:
        self._idle.clear()
        self.calls.put((what, args))

    def wait(self, timeout: float) -> bool:
        return self._idle.wait(timeout)

    def hanging(self) -> float:
        """Seconds the running call is past the timeout; 0 while none is."""
        busy = self.busy
        late = time.monotonic() - busy[1] if busy is not None else 0.0
        return late if late > self.timeout else 0.0

    def problem(self) -> str:
        late = self.hanging()
        if late:
            return f"{self.busy[0] if self.busy else 'a call'} has not returned for {late:.0f} s"
        return self.error

    def close(self, timeout: float) -> None:
        self.calls.put(None)
        self._thread.join(timeout)


class Actions:
    """Every event to each action; one failing or hanging never keeps it from the others."""

    def __init__(self, actions: list[Guarded], failures: Mapping[str, str] | None = None,
                 routes: Mapping[str, Route] | None = None,
                 remedies: Mapping[str, Remedy] | None = None) -> None:
        self.actions = actions
        self.failures = dict(failures or {})  # name -> why it did not load
        self.routes = dict(routes or {})  # name -> which events it takes (default: all)
        self.remedies = dict(remedies or {})  # name -> a Remedy (restart)
        self._troubled: set[str] = set()  # actions that had a problem: reported until OK

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.actions]

    def _each(self, what: str, *args: Any) -> None:
        for a in self.actions:
            a.call(what, *args)

    def send(self, event: Event, host: str) -> None:
        for a in self.actions:
            if self.routes.get(a.name, Route()).takes(event):
                a.call("send", event, host)

    def tick(self, now: float, checks: Mapping[str, CheckRecord]) -> None:
        self._each("tick", now, checks)

    def start(self) -> None:
        self._each("start")

    def drain(self, timeout: float = DRAIN) -> None:
        """Wait (at most ``timeout`` s in all) until every action took what it was given."""
        deadline = time.monotonic() + timeout
        for a in self.actions:
            if not a.hanging():  # reported; the loop does not wait for it again
                a.wait(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        self._each("stop")
        deadline = time.monotonic() + 2 * DRAIN
        for a in self.actions:  # one hanging is left behind (its thread dies with steward)
            a.close(0.1 if a.hanging() else max(0.1, deadline - time.monotonic()))

    def results(self) -> list[Result]:
        """UNKNOWN for an action that failed to load, raised or hangs; OK once it works again."""
        out = [Result(f"action:{name}", Status.UNKNOWN, f"action {name} did not load: {why}",
                      remedy="reinstall or remove the package that provides it",
                      restartable=False) for name, why in sorted(self.failures.items())]
        for a in self.actions:
            problem = a.problem()
            if problem:
                if a.name not in self._troubled:
                    log.error("action %s: %s", a.name, problem)
                self._troubled.add(a.name)
                out.append(Result(f"action:{a.name}", Status.UNKNOWN,
                                  f"action {a.name}: {problem}"[:300].replace("\n", " "),
                                  remedy="journalctl -u steward | grep 'action " + a.name +
                                  "'", restartable=False))
            elif a.name in self._troubled:
                out.append(Result(f"action:{a.name}", Status.OK, f"action {a.name} works",
                                  restartable=False))
        return out


def for_config(config: Config, state_dir: Path, host: str) -> Actions:
    """Every installed action, made from its config table; those not configured are left out
    (e-mail without recipients, a webhook without a URL)."""
    made: list[Guarded] = []
    remedies: dict[str, Remedy] = {}
    routes: dict[str, Route] = {}  # the config's, else the action's own (ROUTE), else all told
    failures: dict[str, str] = {}
    alerts = config.alerts
    for ep in entry_points(GROUP):
        try:
            cls = ep.load()
            options = config.section(cls.Options) if getattr(cls, "Options", None) else None
            action = cls.create(options, state_dir, host)
        except Exception as e:  # missing or broken: reported, the others go on
            failures[ep.name] = f"{ep.value}: {type(e).__name__}: {e}"
            log.error("action %s failed to load: %s", ep.name, failures[ep.name])
            continue
        if hasattr(action, "carry_out"):
            remedies[ep.name] = action
        elif action is not None:
            made.append(Guarded(ep.name, action, alerts.action_timeout))
            routes[ep.name] = (alerts.route or {}).get(ep.name) or \
                getattr(cls, "ROUTE", None) or Route()
    if config.restart.enabled and "restart" not in remedies and "restart" not in failures:
        failures["restart"] = "no steward.actions entry point 'restart' is installed: " \
            "failed units are not restarted"
    return Actions(made, failures, routes, remedies)
