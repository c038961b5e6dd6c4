"""``[notify.webhook]``: events POSTed as JSON to an HTTP(S) endpoint, or in Alertmanager's v2
API shape (``mode = "alertmanager"``, actions.alertmanager: the fleet's Prometheus
Alertmanager receives steward's alerts and routes, groups and silences them with the rest).

Each event is written to a persistent outbox (``<state>/webhook-outbox``) before anything is
sent, and leaves it only once the endpoint answered 2xx; a worker thread retries with backoff
(30 s doubling up to ``retry_max``), so a dead endpoint never holds up the supervisor and a
SIGKILL of steward loses nothing. The URL as logged has no user, password or query string.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from actions.alertmanager import RESEND, Firing
from agent.config.schema import Parser, choice, http_url, number, option, table
from agent.events import Event
from agent.memory import CheckRecord
from agent.notify.outbox import DeliveryWorker, RawOutbox
from agent.system.clock import Clock

log = logging.getLogger(__name__)
MODES = ("json", "alertmanager")
AM_PATH = "/api/v2/alerts"
MAX_ANSWER = 4096  # bytes of an endpoint's answer read (and shown, cut, on an error)


def _url(v: Any) -> str:
    url = http_url(v)
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ValueError("has white space or control characters")
    return url


def _header_name(v: Any) -> str:
    if not isinstance(v, str) or not v or any(not (c.isalnum() or c in "-_") for c in v):
        raise ValueError("not a header name (letters, digits, - and _)")
    return v


def _header_value(v: Any) -> str:
    if not isinstance(v, str) or "\n" in v or "\r" in v or "\0" in v:
        raise ValueError("not one line of text (a newline would start another header)")
    return v


def shown(url: str) -> str:
    """``url`` as it may appear in a log: no user, password, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True)
class WebhookOptions:
    """``[notify.webhook]``: events to an HTTP endpoint or a Prometheus Alertmanager."""

    TABLE: ClassVar[str] = "notify.webhook"

    url: str | None = option(None, Parser(_url, "an http:// or https:// URL"),
                             "where events are POSTed; unset: no webhook. Alertmanager mode: "
                             "its base URL (http://am:9093) or the full /api/v2/alerts")
    mode: str = option("json", choice(*MODES), "json: one JSON object per event; "
                       "alertmanager: Alertmanager's v2 postableAlerts")
    headers: Mapping[str, str] | None = option(None, table(Parser(_header_name, "a header name"),
                                                  Parser(_header_value, "one line of text")),
                                        "extra HTTP headers, e.g. { Authorization = "
                                        "\"Bearer ...\" }")
    timeout: float = option(10.0, number(1, 300), "seconds for each POST")
    retry_max: float = option(1800.0, number(10, 86400), "longest wait between attempts "
                              "of an event not yet delivered")

    @property
    def endpoint(self) -> str:
        assert self.url is not None
        if self.mode == "alertmanager" and not self.url.rstrip("/").endswith(AM_PATH):
            return self.url.rstrip("/") + AM_PATH
        return self.url


def json_body(event: Event, host: str) -> dict[str, Any]:
    return {"host": host, **event.to_dict()}


class WebhookAction:
    """The ``webhook`` action: a Notifier that queues each event it takes and delivers from
    the outbox in its own thread."""

    name: ClassVar[str] = "webhook"
    Options: ClassVar[type[WebhookOptions]] = WebhookOptions

    @classmethod
    def create(cls, options: WebhookOptions, state_dir: Path, host: str
               ) -> WebhookAction | None:
        return cls(options, state_dir, host) if options.url else None

    def __init__(self, opts: WebhookOptions, state_dir: Path, host: str,
                 clock: Clock | None = None) -> None:
        self.opts, self.host, self.clock = opts, host, clock or Clock()
        self.outbox = RawOutbox(Path(state_dir) / "webhook-outbox", opts.retry_max)
        self.firing = Firing(Path(state_dir) / "webhook-firing.json") \
            if opts.mode == "alertmanager" else None
        self._resend_at = 0.0
        self._worker: DeliveryWorker | None = None

    def send(self, event: Event, host: str) -> None:
        """Which events come here is ``[alerts] route.webhook``'s (agent.notify)."""
        now = self.clock.now()
        body: Any = json_body(event, host) if self.firing is None else \
            self.firing.body(event, host, now)
        if not body:
            return
        name = self.outbox.put_text(json.dumps(body, sort_keys=True), now)
        log.info("webhook %s queued for %s: %s %s", name, shown(self.opts.endpoint),
                 event.check, event.status.name)
        if self._worker:
            self._worker.kick()

    def post(self, body: bytes) -> Sequence[tuple[str, bool, str]]:
        """One POST; (url as shown, 2xx, what came back)."""
        import http.client

        url = self.opts.endpoint
        parts = urlsplit(url)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else \
            http.client.HTTPConnection
        path = urlunsplit(("", "", parts.path or "/", parts.query, ""))
        headers = {"Content-Type": "application/json", "User-Agent": "steward",
                   **(self.opts.headers or {})}
        if parts.username is not None and "Authorization" not in headers:
            import base64

            cred = f"{parts.username}:{parts.password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(cred).decode()
        conn = cls(parts.hostname or "", parts.port, timeout=self.opts.timeout)
        try:
            conn.request("POST", path, body=body, headers=headers)
            answer = conn.getresponse()
            text = answer.read(MAX_ANSWER).decode("utf-8", "replace").strip()
        except (OSError, http.client.HTTPException) as e:
            return [(shown(url), False, f"{type(e).__name__}: {e}")]
        finally:
            conn.close()
        ok = 200 <= answer.status < 300
        return [(shown(url), ok, f"HTTP {answer.status}" + ("" if ok else f": {text[:200]}"))]

    def tick(self, now: float, checks: Mapping[str, CheckRecord]) -> None:
        """Alertmanager mode: post what fires again, every RESEND s (best effort: what
        changes goes through the outbox)."""
        if self.firing is None or not self.firing.alerts or now < self._resend_at:
            return
        self._resend_at = now + RESEND
        [(url, ok, detail)] = self.post(json.dumps(list(self.firing.alerts.values()),
                                                   sort_keys=True).encode())
        if not ok:
            log.debug("webhook: re-posting %d firing alerts to %s: %s",
                      len(self.firing.alerts), url, detail)

    def start(self) -> None:
        self._worker = DeliveryWorker(self.outbox, self.post, what="webhook", retry_at_start=True)
        self._worker.start()

    def stop(self) -> None:
        if self._worker:
            self._worker.stop()


