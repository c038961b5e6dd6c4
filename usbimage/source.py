"""The USB drive monitor as a source of ``steward run`` (``steward.sources``): a steward drive
plugged in runs ``[usb] on_insert``; ``[usb] schedule`` backs up to it at set times. The
monitor's thread wakes the supervisor, whose tick takes what it found."""

from __future__ import annotations

from agent.env import Env
from agent.events import Event
from agent.sources import SourceContext
from usbimage.options import UsbOptions


class UsbSource:
    name = "usb"

    def __init__(self, ctx: SourceContext) -> None:
        from usbimage.monitor import DriveMonitor

        self.monitor = DriveMonitor(ctx.env.config.section(UsbOptions), ctx.env.commands,
                                    ctx.steward_argv("backup", "create", "--usb"),
                                    wake=ctx.wake, state_dir=ctx.state_dir,
                                    clock=ctx.env.clock)

    def configure(self, env: Env) -> None:
        self.monitor.options = env.config.section(UsbOptions)  # what an insertion does

    def start(self) -> list[Event]:
        self.monitor.start()
        return []

    def tick(self, now: float) -> list[Event]:
        return self.monitor.alerts(now)

    def status(self) -> None:
        return None

    def stop(self) -> None:
        self.monitor.stop()
