"""Mail content: renders a batch of alerts into a subject, a plain-text body and an HTML body,
and wraps them into an RFC 5322 message.

The templates ship in ``agent/notify/templates/``; a file of the same name in the override
directory (``/etc/steward/templates``) replaces one. With ``[notify.email] language = "ja"``
the Japanese set in ``templates/ja/`` is used (overridden by ``ja/NAME`` in the override
directory). Templates see only data, prepared here:
``items`` (worst first; each with kind, check, status, label, colour, summary, details, remedy,
actions, repeats, since, duration), ``host``, ``kind``, ``now`` and, in the bodies, ``subject``.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from agent.events import Event

log = logging.getLogger(__name__)

SUBJECT_MAX = 150  # RFC 5322 recommends 78 per line; past ~150 mail clients cut it anyway
_COLOUR = {"OK": "#2e7d32", "RECOVERED": "#2e7d32", "WARN": "#e69500", "CRIT": "#c62828",
           "UNKNOWN": "#6a1b9a"}


def _environment(loader: jinja2.BaseLoader) -> SandboxedEnvironment:
    # Sandboxed: override templates are admin-written, but must not reach Python internals.
    # Autoescape by name, so only the HTML body is escaped; the text parts print data as is.
    return SandboxedEnvironment(
        loader=loader, autoescape=jinja2.select_autoescape(["html", "html.j2"]),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True)


def _local(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


def _duration(seconds: float) -> str:
    if seconds < 60:
        return "less than a minute"
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60} min"
    return f"{minutes // 1440} days"


def _view(item: Event, now: float) -> dict[str, Any]:
    label = "RECOVERED" if item.kind == "recovery" else item.status.name
    return {"kind": item.kind, "check": item.check, "status": item.status.name, "label": label,
            "colour": _COLOUR[label], "summary": item.summary, "details": item.details,
            "remedy": item.remedy, "actions": list(item.actions), "repeats": item.repeats,
            "since": _local(item.since) if item.since else "",
            "duration": _duration(now - item.since) if item.since else ""}


class Templates:
    """The three mail templates, built-in ones overridable per file from ``override_dir``."""

    def __init__(self, override_dir: str | Path | None = "/etc/steward/templates",
                 language: str = "en") -> None:
        self._override = Path(override_dir) if override_dir is not None else None
        self._prefix = "" if language == "en" else f"{language}/"  # validated by the config
        # PackageLoader reads through the import system: source tree, editable install or wheel.
        builtin = jinja2.PackageLoader("agent.notify", "templates")
        self._builtin = _environment(builtin)
        self._env = self._builtin if self._override is None else _environment(
            jinja2.ChoiceLoader([jinja2.FileSystemLoader(self._override), builtin]))

    def render(self, items: Sequence[Event], *, host: str, kind: str,
               now: float) -> tuple[str, str, str]:
        """(subject, text, html) for one mail about ``items``."""
        if not items:
            raise ValueError("a mail needs at least one item")
        ordered = sorted(items, key=lambda i: -i.status.severity)  # stable: ties keep order
        ctx: dict[str, Any] = {"items": [_view(i, now) for i in ordered], "host": host,
                               "kind": kind, "now": _local(now)}
        # One line whatever the template or a summary holds: a newline would break the header.
        subject = " ".join(self._render("subject.txt.j2", ctx).split())
        if len(subject) > SUBJECT_MAX:
            subject = subject[:SUBJECT_MAX - 1].rstrip() + "…"
        ctx["subject"] = subject
        return subject, self._render("alert.txt.j2", ctx), self._render("alert.html.j2", ctx)

    def _render(self, name: str, ctx: Mapping[str, Any]) -> str:
        name = self._prefix + name
        try:
            return self._env.get_template(name).render(ctx)
        except Exception as e:  # any failure of an admin's template, not only TemplateError
            path = self._override / name if self._override is not None else None
            if path is None or not path.is_file():
                raise  # the built-in template failed: a bug, not something to paper over
            # A broken override must not stop the mail that may be reporting an outage.
            log.error("mail template %s is broken (%s: %s); using the built-in one",
                      path, type(e).__name__, e)
            return self._builtin.get_template(name).render(ctx)


def build_message(subject: str, text: str, html: str, *, sender: str, to: Sequence[str],
                  message_id: str | None = None, date: float | None = None,
                  kind: str | None = None) -> EmailMessage:
    """A multipart/alternative message (text first, so it is the fallback) in UTF-8."""
    msg = EmailMessage()
    domain = email.utils.parseaddr(sender)[1].rpartition("@")[2]
    msg["Message-ID"] = message_id or email.utils.make_msgid(domain=domain or None)
    msg["Date"] = email.utils.formatdate(date, localtime=True)
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: vacation responders stay quiet
    if kind:  # the mail's kind (problem, digest, ...), for the administrator's mail filters
        msg["X-Steward-Kind"] = kind
    msg.set_content(text, charset="utf-8")
    msg.add_alternative(html, subtype="html", charset="utf-8")
    return msg
