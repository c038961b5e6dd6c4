"""The webhook action against a real HTTP server on loopback: JSON and Alertmanager v2 bodies
(checked against Alertmanager's published schema), retries through the persistent outbox, a
SIGKILL of ``steward run`` losing nothing, no secret of the URL in the log, bad config
refused at load."""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from actions.webhook import WebhookAction, WebhookOptions, shown
from agent.config import from_tables
from agent.config.schema import build
from agent.events import Event
from agent.memory import Memory
from agent.model import Status
from agent.notices import Notices
from agent.notify import for_config
from tests.conftest import QUIET, REPO, run_steward

SCHEMA = json.loads((Path(__file__).parents[1] / "fixtures" /
                     "alertmanager-v2-postable-alerts.json").read_text())


class Receiver:
    """An HTTP server on 127.0.0.1 that records each POST and answers with ``codes`` in turn
    (then 200)."""

    def __init__(self, port: int = 0, codes: tuple[int, ...] = ()) -> None:
        self.posts: list[dict[str, Any]] = []
        self.codes = list(codes)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.posts.append({"path": self.path, "headers": dict(self.headers),
                                    "body": json.loads(body)})
                code = outer.codes.pop(0) if outer.codes else 200
                self.send_response(code)
                self.end_headers()
                self.wfile.write(b"nope" if code >= 300 else b"ok")

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _options(**table: Any) -> WebhookOptions:
    return build(WebhookOptions, table, "<test>", "notify.webhook")


def _wait(cond: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


PROBLEM = Event("problem", "port:127.0.0.1:1", Status.CRIT, "connection refused",
                details="tried 3 times", remedy="start it", since=1_700_000_000.0)


def test_json_body_with_headers_and_retries_until_accepted(receiver, tmp_path):
    opts = _options(url=f"http://127.0.0.1:{receiver.port}/hook",
                    headers={"X-Token": "abc"})
    receiver.codes = [500, 503]
    action = WebhookAction(opts, tmp_path, "box1")
    action.send(PROBLEM, "box1")
    assert len(action.outbox.queued()) == 1  # on disk before any attempt
    for _ in range(3):
        action.outbox.deliver(action.post, time.time(), force=True)
    assert action.outbox.queued() == []
    assert len(receiver.posts) == 3  # two refusals, then accepted
    post = receiver.posts[-1]
    assert post["path"] == "/hook" and post["headers"]["X-Token"] == "abc"
    assert post["body"]["host"] == "box1" and post["body"]["status"] == "CRIT"
    assert post["body"]["check"] == PROBLEM.check and post["body"]["remedy"] == "start it"


def test_a_refused_event_waits_with_backoff(receiver, tmp_path):
    receiver.codes = [500, 500]
    action = WebhookAction(_options(url=f"http://127.0.0.1:{receiver.port}/"), tmp_path, "h")
    action.send(PROBLEM, "h")
    now = time.time()
    [first] = action.outbox.deliver(action.post, now)
    assert not first.delivered and "HTTP 500" in first.relays[0][2]
    [q] = action.outbox.queued()
    assert q.next_at == pytest.approx(now + 30)
    assert action.outbox.deliver(action.post, now + 29) == []  # not due yet
    action.outbox.deliver(action.post, now + 30)
    [q] = action.outbox.queued()
    assert q.next_at == pytest.approx(now + 30 + 60)  # doubled


def test_alertmanager_body_fits_its_v2_schema_and_a_recovery_ends_the_alert(receiver, tmp_path):
    action = WebhookAction(_options(url=f"http://127.0.0.1:{receiver.port}",
                                    mode="alertmanager"), tmp_path, "box1")
    action.send(PROBLEM, "box1")
    action.send(Event("recovery", PROBLEM.check, Status.OK, "port open", since=1_700_000_100,
                      was=Status.CRIT), "box1")
    action.send(Event("problem", "disk:/", Status.WARN, "81% used"), "box1")
    action.send(Event("problem", "disk:/", Status.CRIT, "99% used"), "box1")
    action.outbox.deliver(action.post, time.time())
    assert [p["path"] for p in receiver.posts] == ["/api/v2/alerts"] * 4
    validator = jsonschema.Draft4Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    for p in receiver.posts:
        validator.validate(p["body"])
        for alert in p["body"]:
            for key in ("startsAt", "endsAt"):
                if key in alert:
                    datetime.fromisoformat(alert[key].replace("Z", "+00:00"))
    [problem], [recovery], [warn], [warn_ended, crit] = (p["body"] for p in receiver.posts)
    assert problem["labels"]["severity"] == "crit" and problem["labels"]["instance"] == "box1"
    assert problem["labels"]["check"] == PROBLEM.check
    assert problem["annotations"]["kind"] == "problem"
    assert "endsAt" not in problem and "endsAt" in recovery
    assert recovery["labels"] == problem["labels"], "the recovery ends that very alert"
    assert warn["labels"]["alertname"] == "steward_disk"
    assert warn_ended["labels"] == warn["labels"] and "endsAt" in warn_ended, \
        "WARN to CRIT ends the WARN alert"
    assert crit["labels"]["severity"] == "crit" and "endsAt" not in crit


def test_what_fires_is_posted_again_and_still_fires_after_a_restart(receiver, tmp_path):
    """Alertmanager resolves what is not re-sent within resolve_timeout: steward re-posts."""
    opts = _options(url=f"http://127.0.0.1:{receiver.port}", mode="alertmanager")
    action = WebhookAction(opts, tmp_path, "box1")
    action.send(PROBLEM, "box1")
    action.send(Event("problem", "disk:/", Status.WARN, "81% used"), "box1")
    action.send(Event("recovery", "disk:/", Status.OK, "ok", was=Status.WARN), "box1")
    action.outbox.deliver(action.post, time.time())
    receiver.posts.clear()
    t = time.time()
    action.tick(t, {})
    action.tick(t + 30, {})  # not yet
    again = WebhookAction(opts, tmp_path, "box1")  # steward restarted
    again.tick(t + 61, {})
    assert len(receiver.posts) == 2
    for post in receiver.posts:
        assert [a["labels"]["check"] for a in post["body"]] == [PROBLEM.check]
        assert "endsAt" not in post["body"][0]


def test_its_route_picks_the_events_and_recoveries_follow_what_was_sent(receiver, tmp_path):
    """[alerts] route.webhook = { min_severity = "CRIT" }: the notices policy decides, the
    route picks, a recovery reaches the webhook only if its problem did."""
    config = from_tables({"alerts": {"route": {"webhook": {"min_severity": "CRIT"}}},
                          "notify": {"webhook": {"url": f"http://127.0.0.1:{receiver.port}/"}}},
                         "<test>", {})
    actions = for_config(config, tmp_path, "h")
    notices = Notices(Memory(), config.alerts)
    t = 1_700_000_000.0
    for e in (Event("problem", "disk:/", Status.WARN, "81% used", since=t),
              Event("recovery", "disk:/", Status.OK, "ok", since=t + 1),
              PROBLEM, Event("recovery", PROBLEM.check, Status.OK, "open", since=t + 2)):
        for told in notices.decide([e], t):
            actions.send(told, "h")
    actions.drain()
    [webhook] = [a.notifier for a in actions.actions if a.name == "webhook"]
    webhook.outbox.deliver(webhook.post, time.time())
    actions.stop()
    assert [(p["body"]["check"], p["body"]["status"], p["body"]["was"])
            for p in receiver.posts] == [(PROBLEM.check, "CRIT", None),
                                         (PROBLEM.check, "OK", "CRIT")]


def test_the_url_as_logged_has_no_secrets():
    assert shown("https://u:pw@hook.example:8443/a/b?token=t#f") == "https://hook.example:8443/a/b"


@pytest.mark.parametrize(("table", "problem"), [
    ('url = "ftp://hook.example/"', "not an http:// or https:// URL"),
    ('url = "file:///etc/passwd"', "not an http:// or https:// URL"),
    ('url = "http://h/"\nheaders = { X-A = "a\\r\\nX-Evil: 1" }', "not one line of text"),
    ('url = "http://h/"\nmode = "pagerduty"', "json"),
])
def test_bad_webhook_config_is_refused_at_load(tmp_path, table, problem):
    conf = tmp_path / "steward.toml"
    conf.write_text("[notify.webhook]\n" + table + "\n")
    conf.chmod(0o600)
    done = run_steward("config", "check", "--config", str(conf))
    assert done.returncode == 2, done.stderr
    assert "notify.webhook" in done.stderr and problem in done.stderr
    assert "Traceback" not in done.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(conf: Path, state: Path, err: Path) -> subprocess.Popen[str]:
    with open(err, "w") as fh:
        return subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(conf),
                                 "--state-dir", str(state)], cwd=REPO, text=True,
                                stdout=subprocess.DEVNULL, stderr=fh)


def test_steward_run_loses_no_event_across_sigkill_and_logs_no_url_secret(tmp_path):
    port, closed = _free_port(), _free_port()
    conf, state = tmp_path / "steward.toml", tmp_path / "state"
    conf.write_text(QUIET + f'[checks.port]\ntargets = ["127.0.0.1:{closed}"]\ninterval = 1\n'
                    '[notify.webhook]\n'
                    f'url = "http://hook:hunter2@127.0.0.1:{port}/in?token=s3cr3t"\n')
    conf.chmod(0o600)
    outbox = state / "webhook-outbox"
    first, second = tmp_path / "stderr1", tmp_path / "stderr2"
    proc = _run(conf, state, first)
    def said() -> bool:  # the daemon's own record that the problem was passed on
        try:
            rec = json.loads((state / "state.json").read_text())["checks"]
            return rec[f"port:127.0.0.1:{closed}"]["alerted"] == "CRIT"
        except (OSError, ValueError, KeyError):
            return False

    try:  # nothing listens yet: the event waits in the outbox
        _wait(lambda: list(outbox.glob("*.body")) and "not delivered" in first.read_text()
              and said())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    receiver = Receiver(port)
    try:
        proc = _run(conf, state, second)  # restarted: it tries what waits at once
        try:
            _wait(lambda: receiver.posts and not list(outbox.glob("*.body")))
        finally:
            proc.terminate()
            proc.wait(10)
    finally:
        receiver.close()
    got = [p for p in receiver.posts if p["body"]["check"] == f"port:127.0.0.1:{closed}"]
    assert len(got) == 1, receiver.posts  # the daemon knew it had said it: no second event
    assert got[0]["body"]["status"] == "CRIT" and got[0]["path"] == "/in?token=s3cr3t"
    assert got[0]["headers"]["Authorization"] == "Basic " + base64.b64encode(
        b"hook:hunter2").decode()
    logs = first.read_text() + second.read_text()
    assert f"127.0.0.1:{port}/in" in logs
    assert "hunter2" not in logs and "s3cr3t" not in logs
