"""Postfix's mail queue: how much waits, for how long, and why (``postqueue -j``).

A backlog is a symptom (a relay down, DNS failing, a blocklisting), never cured by restarting
Postfix, so results are not restartable.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agent.config.schema import RANGE, CheckOptions, number, option
from agent.env import Env
from agent.model import Check, Metric, Result, Status
from agent.quote import quote
from agent.ranges import Range, judge
from agent.system.commands import CommandError, CommandNotFound
from checks.services import watched_units

log = logging.getLogger(__name__)

QUEUES = ("active", "deferred", "hold", "incoming")
# maildrop (submitted, not yet picked up) is counted with incoming: both are mail not yet
# in the queue manager's hands.
_ALIASES = {"maildrop": "incoming"}
_SUSPENDED = "delivery temporarily suspended:"
REMEDY = ("see what waits and why: postqueue -p (or mailq); fix the cause (relay, DNS, "
          "the receiving side), then postqueue -f to retry at once")


@dataclass(frozen=True)
class MailQueueOptions(CheckOptions):
    interval: float = option(300.0, number(1, 86400), "seconds between runs under steward run "
                             "(postqueue asks showq to read the whole queue)")
    deferred_warn: Range | None = option(Range.parse("50"), RANGE, "deferred messages")
    deferred_crit: Range | None = option(Range.parse("500"), RANGE, "deferred messages")
    age_warn: Range | None = option(Range.parse("60"), RANGE,
                                    "minutes the oldest deferred message has waited")
    age_crit: Range | None = option(Range.parse("240"), RANGE,
                                    "minutes the oldest deferred message has waited")
    postqueue_timeout: float = option(20.0, number(0.1, 3600),
                                      "seconds postqueue -j may take (long for huge queues)")
    timeout: float = option(30.0, number(0.1, 3600), "seconds before the check is UNKNOWN")


@dataclass
class QueueSummary:
    """What ``postqueue -j`` listed."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(QUEUES, 0))
    oldest_deferred: float | None = None  # arrival time (epoch seconds)
    reasons: Counter[str] = field(default_factory=Counter)  # deferred recipients' reasons
    skipped: list[str] = field(default_factory=list)  # lines that were not a queue entry


def parse_postqueue(text: str) -> QueueSummary:
    """Tally ``postqueue -j`` output (one JSON object per line); lines that are not a
    well-formed queue entry are skipped and kept for the details."""
    out = QueueSummary()
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            queue, arrival, recipients = _entry(entry)
        except (ValueError, TypeError, KeyError) as e:
            out.skipped.append(f"{line[:120]!r}: {e}")
            continue
        queue = _ALIASES.get(queue, queue)
        out.counts[queue] = out.counts.get(queue, 0) + 1
        if queue != "deferred":
            continue
        if arrival is not None and (out.oldest_deferred is None or arrival < out.oldest_deferred):
            out.oldest_deferred = arrival
        for r in recipients:
            reason = r.get("delay_reason") if isinstance(r, dict) else None
            if isinstance(reason, str) and reason.strip():
                out.reasons[_cause(reason)] += 1
    return out


def _cause(reason: str) -> str:
    """One cause, one tally: after a failed attempt Postfix throttles the destination and
    defers the rest with "delivery temporarily suspended: <the same cause>"."""
    reason = " ".join(reason.split())
    while reason.lower().startswith(_SUSPENDED) and len(reason) > len(_SUSPENDED):
        reason = reason[len(_SUSPENDED):].lstrip()
    return reason


def _entry(entry: Any) -> tuple[str, float | None, list[Any]]:
    if not isinstance(entry, dict):
        raise ValueError("not a JSON object")
    queue = entry["queue_name"]
    if not isinstance(queue, str) or not queue.isalnum():
        raise ValueError(f"queue_name {quote(queue)} is not a queue name")
    arrival = entry.get("arrival_time")
    if isinstance(arrival, bool) or not isinstance(arrival, (int, float)) or \
            not math.isfinite(arrival) or arrival <= 0:
        arrival = None  # the message still counts; only its age is unknown
    recipients = entry.get("recipients")
    return queue, arrival, recipients if isinstance(recipients, list) else []


def _seconds(r: Range | None) -> str:
    """A minutes range as the same range in seconds (perfdata carries seconds)."""
    if r is None:
        return ""
    lo = "~" if r.start == -math.inf else f"{r.start * 60:g}"
    hi = "" if r.end == math.inf else f"{r.end * 60:g}"
    if r.start == 0 and hi:
        text = hi
    else:
        text = f"{lo}:{hi}"
    return ("@" if r.inside else "") + text


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class MailQueueCheck(Check):
    name = "mailqueue"
    Options = MailQueueOptions
    options: MailQueueOptions

    def run(self, env: Env) -> Iterable[Result]:
        link: dict[str, Any] = {"unit": "postfix", "depends_on": ("service:postfix",),
                                "restartable": False}
        watched = "postfix" in watched_units(env)
        if not watched and not (env.sysroot / "etc/postfix/main.cf").exists():
            return []  # Postfix not set up here (or not installed): nothing to watch
        try:
            out = env.commands.run(["postqueue", "-j"], timeout=self.options.postqueue_timeout)
        except CommandNotFound:
            if not watched:
                return []
            return [self.result(Status.UNKNOWN, "postqueue not found",
                                remedy="is the postfix package installed? rpm -V postfix; "
                                "is /usr/sbin in steward's PATH?", **link)]
        except CommandError as e:
            # "Queue report unavailable - mail system is down" (exit 69) and the like.
            why = (e.stderr_tail or e.reason).splitlines()[-1][:200]
            return [self.result(Status.UNKNOWN, f"cannot read the queue: {why}", details=str(e),
                                remedy="systemctl status postfix; postfix check", **link)]
        return [self.judge(parse_postqueue(out.stdout), env.clock.now())]

    def judge(self, q: QueueSummary, now: float) -> Result:
        """The result for a tallied queue at time ``now``."""
        o = self.options
        deferred = q.counts.get("deferred", 0)
        age = max(0.0, now - q.oldest_deferred) if q.oldest_deferred is not None else 0.0
        status = Status(max(judge(deferred, o.deferred_warn, o.deferred_crit),
                            judge(age / 60, o.age_warn, o.age_crit)))
        metrics = [Metric(name, q.counts.get(name, 0), min=0) if name != "deferred" else
                   Metric(name, deferred, "", o.deferred_warn.text if o.deferred_warn else "",
                          o.deferred_crit.text if o.deferred_crit else "", 0)
                   for name in QUEUES]
        metrics.append(Metric("oldest_deferred_age", round(age, 1), "s", _seconds(o.age_warn),
                              _seconds(o.age_crit), 0))
        parts = [f"{n} {name}" for name, n in q.counts.items() if n or name == "deferred"]
        summary = ", ".join(parts)
        if deferred:
            summary += f" (oldest {_age(age)})"
        if q.reasons:
            reason, n = q.reasons.most_common(1)[0]
            short = reason if len(reason) <= 100 else reason[:97] + "..."
            summary += f"; most common reason: {short} ({_plural(n, 'recipient')})"
        details = "\n".join([f"{n}x {r}" for r, n in q.reasons.most_common(10)]
                            + [f"unparsed line: {s}" for s in q.skipped[:5]])
        if q.skipped:
            log.warning("postqueue -j: %d line(s) not understood", len(q.skipped))
        return self.result(status, summary, details=details, metrics=tuple(metrics),
                           remedy=REMEDY if status is not Status.OK else "",
                           unit="postfix", depends_on=("service:postfix",), restartable=False)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
