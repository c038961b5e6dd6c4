"""The supervisor reads time only from its clock: driven through a fake one, a real pass
loop (a real port check against a real closed, then listening, socket) gives a problem, a
reminder after an hour, none in between, and the recovery, to a recording action."""

from __future__ import annotations

import socket
from pathlib import Path

from agent.config import from_tables
from agent.env import Env
from agent.notify import Actions, Guarded
from agent.registry import discover
from agent.state import StateDir
from agent.supervisor import Supervisor
from agent.system.sdnotify import SdNotify
from tests.clocks import FakeClock

T0 = 1_800_000_000.0


class Recorder:
    def __init__(self) -> None:
        self.events: list = []

    def send(self, event, host):
        self.events.append(event)

    def tick(self, now, checks):
        pass

    def start(self):
        pass

    def stop(self):
        pass


def test_time_moves_only_when_the_clock_does(tmp_path: Path):
    registry = discover()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    off = {name: {"enabled": False} for name in registry.checks if name != "port"}
    config = from_tables({"checks": {**off, "port": {"targets": [f"127.0.0.1:{port}"],
                                                     "interval": 60}},
                          "alerts": {"reminder": 3600, "cooldown": 900}},
                         "<test>", registry.checks)
    clock, recorder = FakeClock(T0), Recorder()
    state = StateDir(tmp_path / "state")
    state.ensure()
    sup = Supervisor(registry, Env(config, clock=clock, state_dir=tmp_path / "state"), None,
                     lambda _config: Actions([Guarded("rec", recorder)]), state,
                     sd=SdNotify({}))

    def at(seconds: float) -> list[tuple[str, str]]:
        clock.advance(seconds)
        sup.run_pass()
        sup._notifier().drain()
        seen = [(e.kind, e.status.name) for e in recorder.events]
        recorder.events.clear()
        return seen

    check = f"port:127.0.0.1:{port}"
    assert at(0) == [("problem", "CRIT")]
    assert at(30) == [], "not due: the interval is 60 s by the clock"
    assert at(3600 - 30) == [("reminder", "CRIT")]
    assert at(1800) == [], "the next reminder is 2 h after the first"
    assert sup.memory.checks[check].since == T0
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen(1)
        assert at(60) == [("recovery", "OK")]
    assert sup.status()["checks"][check]["status"] == "OK"
    assert sup.memory.checks[check].since == T0 + 3600 + 1800 + 60
