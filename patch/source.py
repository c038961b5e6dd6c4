"""The patch window as a source of ``steward run`` (``steward.sources``): when ``[patch]
schedule`` is set, it starts ``steward patch apply`` as its own transient unit when the window
opens; a window missed or given up is an alert (the apply mails its own report). At start it
says whether the reboot a patch run asked for happened."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from agent.env import Env
from agent.events import Event
from agent.model import Status
from agent.sources import SourceContext
from patch.options import PatchOptions

log = logging.getLogger(__name__)


class PatchWindowSource:
    name = "patch"

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx
        self.scheduler: Any = None  # patch.window.PatchScheduler while a schedule is set

    def configure(self, env: Env) -> None:
        opts = env.config.section(PatchOptions)
        if opts.parsed_schedule is None:
            self.scheduler = None
        elif self.scheduler is None or self.scheduler.options != opts:  # a reload keeps its draw
            from patch.window import PatchScheduler  # loads only with a window

            self.scheduler = PatchScheduler(opts, self.ctx.state_dir, env.commands,
                                            clock=env.clock,
                                            argv=self.ctx.steward_argv("patch", "apply"))

    def start(self) -> list[Event]:
        """Did the reboot a patch run asked for happen? (Health after it is the first pass,
        whose problems are alerts of their own.)"""
        if not (self.ctx.state_dir / "patch" / "reboot.json").exists():
            return []
        from patch.rebooting import after_reboot

        now = self.ctx.env.clock.now()
        news = after_reboot(self.ctx.state_dir, now)
        if news is None:
            return []
        return [Event("patch", "patch:reboot", Status.OK if news.happened else Status.CRIT,
                      news.summary, remedy="" if news.happened else
                      "reboot in the next maintenance window: systemctl reboot",
                      since=now)]

    def tick(self, now: float) -> list[Event]:
        if self.scheduler is None:
            return []
        events = self.scheduler.tick()
        for e in events:
            log.info("patch window: %s%s", e.summary, f" ({e.detail})" if e.detail else "")
        return [Event("patch", "patch:window", Status.CRIT if e.kind == "gave-up" else
                      Status.WARN, e.summary, details=e.detail,
                      remedy="journalctl -u 'steward-patch-*'; steward patch apply by hand",
                      since=now) for e in events if e.alert]

    def status(self) -> Mapping[str, Any]:
        return self.scheduler.status() if self.scheduler is not None else {"schedule": None}

    def stop(self) -> None:
        return None
