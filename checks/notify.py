"""Whether steward's alerts reach the administrator: configured, and not stuck in the outbox."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent.config.schema import RANGE, CheckOptions, option
from agent.config.trust import secret_problem
from agent.env import Env
from agent.model import Check, Metric, Result, Status
from agent.notify.outbox import Outbox
from agent.ranges import Range, judge


@dataclass(frozen=True)
class NotifyOptions(CheckOptions):
    warn: Range = option(Range.parse("10"), RANGE, "minutes the oldest queued mail waits")
    crit: Range = option(Range.parse("60"), RANGE, "minutes the oldest queued mail waits")


class NotifyCheck(Check):
    name = "notify"
    Options = NotifyOptions
    options: NotifyOptions

    def run(self, env: Env) -> Iterable[Result]:
        email = env.config.email
        if not email.enabled:
            return [self.result(Status.WARN, "no e-mail recipients: alerts reach only the "
                                "journal", remedy="set [notify.email] to = [...] and relays in "
                                "the config, then: steward notify test")]
        if email.username is not None and email.password_file is not None:
            # Checked at load too; this catches a file changed since (deleted, chmod 644).
            found = secret_problem(email.password_file)
            if found is not None:
                problem, remedy = found
                return [self.result(Status.CRIT, f"password_file {email.password_file}: "
                                    f"{problem}; no mail can be sent",
                                    remedy=remedy or "fix [notify.email] password_file")]
        queued = Outbox(env.state_dir / "outbox").queued()
        if not queued:
            return [self.result(Status.OK, f"no mail waiting; {len(email.to)} recipient(s)",
                                metrics=(Metric("queued", 0, "", min=0),))]
        age = (env.clock.now() - queued[0].queued_at) / 60
        status = Status(judge(age, self.options.warn, self.options.crit))
        return [self.result(
            status, f"notifications undeliverable for {age:.0f} min, {len(queued)} queued",
            details=f"last error: {queued[0].last_error or 'not tried yet'}",
            remedy="check the relays: steward notify test; deliver now: steward notify flush",
            metrics=(Metric("queued", len(queued), "", min=0),
                     Metric("oldest_age", round(age * 60, 1), "s", min=0)))]
