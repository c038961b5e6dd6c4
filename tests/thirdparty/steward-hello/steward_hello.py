"""A third party's steward plugins, none of them in steward's tree."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from agent.commands import Command
from agent.config.schema import TEXT, CheckOptions, option
from agent.events import Event
from agent.model import Check, Status
from checks.audit.base import Finding

ORDER = 90  # after steward's own families in the audit report


@dataclass(frozen=True)
class HelloOptions(CheckOptions):
    path: str = option("/nonexistent/hello", TEXT, "the file that must exist")


class HelloCheck(Check):
    """CRIT while ``path`` does not exist."""

    name = "hello"
    Options = HelloOptions

    def run(self, env):
        if os.path.exists(self.options.path):
            return [self.result(Status.OK, f"{self.options.path} is there")]
        return [self.result(Status.CRIT, f"{self.options.path} is missing",
                            remedy=f"touch {self.options.path}", restartable=False)]


@dataclass(frozen=True)
class HelloActionOptions:
    TABLE = "notify.hello"
    path: str = option("/nonexistent/hello-events", TEXT, "events are appended here")


class HelloAction:
    """Each event as one JSON line in ``[notify.hello] path``."""

    name = "hello"
    Options = HelloActionOptions

    @classmethod
    def create(cls, options, state_dir, host):
        return cls(options.path)

    def __init__(self, path):
        self.path = path

    def send(self, event, host):
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"host": host, **event.to_dict()}) + "\n")

    def tick(self, now, checks):
        pass

    def start(self):
        pass

    def stop(self):
        pass


class BrokenAction(HelloAction):
    """Raises on every event."""

    name = "broken"
    Options = None

    @classmethod
    def create(cls, options, state_dir, host):
        return cls("")

    def send(self, event, host):
        raise RuntimeError("broken on purpose")


class HangingAction(BrokenAction):
    """Never returns from its first event."""

    name = "hanging"

    def send(self, event, host):
        import time

        time.sleep(3600)


def audit(ctx):
    """The hello family: one rule, whether /etc/hello.conf exists below the sysroot."""
    found = (ctx.sysroot / "etc/hello.conf").exists()
    return [Finding("hello.conf", "hello configured", found,
                    "present" if found else "missing", "present",
                    "echo hi > /etc/hello.conf", severity=Status.WARN)]


class Heartbeat:
    """A source: an event once an hour (the first at the first tick)."""

    name = "heartbeat"

    def __init__(self, ctx):
        self.next = 0.0

    def configure(self, env):
        pass

    def start(self):
        return []

    def tick(self, now):
        if now < self.next:
            return []
        self.next = now + 3600
        return [Event("heartbeat", "hello:heartbeat", Status.OK, "still here", since=now)]

    def status(self):
        return {"next": self.next}

    def stop(self):
        pass


def _add(sub, common):
    common(sub.add_parser("hello", help="say hello"))


def _run(args, setup):
    _, env = setup(args, checks=False)
    print("hello from", env.config.source)
    return 0


COMMAND = Command(_add, {"hello": _run})
