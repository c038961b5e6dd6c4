"""Mail rendering: subjects, both bodies, hostile data, override templates and the MIME message,
parsed back the way a mail client would."""

from __future__ import annotations

import logging
import time
from email.parser import BytesParser
from email.policy import default

import pytest

from agent.events import Event
from agent.model import Status
from agent.notify.templates import Templates, build_message

NOW = 1_700_000_000.0
POSTFIX = Event("restart", "service:postfix", Status.CRIT, "failed (exit-code)",
                   details="postfix.service: Main process exited, status=1",
                   remedy="journalctl -u postfix.service", since=NOW - 12 * 60,
                   actions=("systemctl restart postfix.service (1 of 3 within 15 min)",),
                   repeats=2)
HOSTILE = "<script>alert(1)</script> {{ 7*7 }} {% for x in y %}"


@pytest.fixture
def tpl():
    return Templates(None)  # never the host's /etc/steward/templates


def render(tpl, *items, kind="problem"):
    return tpl.render(items, host="mail1", kind=kind, now=NOW)


def test_subject_for_one_item_names_host_status_check_and_summary(tpl):
    assert render(tpl, POSTFIX)[0] == "[steward] mail1: CRIT service:postfix failed (exit-code)"


def test_subject_for_many_items_leads_with_the_worst(tpl):
    warns = [Event("problem", f"disk:/d{i}", Status.WARN, "90% used") for i in range(10)]
    unknowns = [Event("problem", f"port:{i}", Status.UNKNOWN, "?") for i in range(9)]
    subject = render(tpl, *warns, *unknowns, POSTFIX)[0]
    assert subject == "[steward] mail1: CRIT service:postfix and 19 more"


def test_subject_for_a_recovery(tpl):
    item = Event("recovery", "service:postfix", Status.OK, "active (running)")
    assert render(tpl, item, kind="recovery")[0] == (
        "[steward] mail1: RECOVERED service:postfix active (running)")


def test_subject_is_one_bounded_line_whatever_the_summary(tpl):
    item = Event("problem", "service:postfix", Status.CRIT, "line one\nline two\r\n" * 40)
    subject = render(tpl, item)[0]
    assert "\n" not in subject and "\r" not in subject
    assert len(subject) <= 150 and subject.endswith("…")
    assert subject.startswith("[steward] mail1: CRIT service:postfix line one line two")


def test_both_bodies_say_what_failed_since_when_what_was_done_and_what_to_do(tpl):
    ok = Event("recovery", "disk:/", Status.OK, "22% used")
    _, text, html = render(tpl, ok, POSTFIX)
    since = time.strftime("%H:%M:%S", time.localtime(POSTFIX.since))
    for body in (text, html):
        assert body.index("service:postfix") < body.index("disk:/")  # worst first
        for fact in ("failed (exit-code)", since, "for 12 min", POSTFIX.actions[0],
                     POSTFIX.details, POSTFIX.remedy, "2 more state change", "RECOVERED",
                     "steward on mail1", time.strftime("%H:%M:%S", time.localtime(NOW))):
            assert fact in body, (fact, body)
    assert "#c62828" in html and "#2e7d32" in html  # red for CRIT, green for the recovery
    assert "http" not in html and "<img" not in html and "<link" not in html


def test_hostile_data_is_escaped_in_html_and_literal_in_text(tpl):
    item = Event("problem", f"port:{HOSTILE}", Status.CRIT, HOSTILE, details=HOSTILE,
                    remedy=HOSTILE, actions=(HOSTILE,))
    subject, text, html = render(tpl, item)
    assert "<script>" not in html
    # check, summary, action, details, remedy; in the HTML also check and summary in <title>
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt; {{ 7*7 }} {% for x in y %}") == 7
    assert text.count(HOSTILE) == 5
    assert HOSTILE in subject
    assert not any("49" in part for part in (subject, text, html))


def test_an_override_file_wins_and_the_others_stay_built_in(tmp_path, tpl):
    (tmp_path / "subject.txt.j2").write_text("custom {{ host }} {{ items | length }}")
    subject, text, html = Templates(tmp_path).render([POSTFIX], host="mail1", kind="problem",
                                                     now=NOW)
    assert subject == "custom mail1 1"
    _, builtin_text, builtin_html = render(tpl, POSTFIX)
    assert text == builtin_text
    assert html == builtin_html.replace(render(tpl, POSTFIX)[0], subject)  # only the <title>


def test_a_missing_override_dir_is_fine(tmp_path, tpl):
    assert Templates(tmp_path / "absent").render(
        [POSTFIX], host="mail1", kind="problem", now=NOW) == render(tpl, POSTFIX)


@pytest.mark.parametrize("broken", [
    "{% for %}",  # syntax error
    "{{ no_such_variable }}",  # StrictUndefined
    "{{ ''.__class__.__mro__ }}",  # the sandbox refuses
])
def test_a_broken_override_falls_back_to_the_built_in_and_logs(tmp_path, tpl, caplog, broken):
    path = tmp_path / "alert.txt.j2"
    path.write_text(broken)
    with caplog.at_level(logging.ERROR, logger="agent.notify.templates"):
        got = Templates(tmp_path).render([POSTFIX], host="mail1", kind="problem", now=NOW)
    assert got == render(tpl, POSTFIX)
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert str(path) in caplog.text


def test_no_items_is_an_error(tpl):
    with pytest.raises(ValueError):
        render(tpl)


def test_build_message_is_multipart_alternative_text_then_html_and_parses_back(tpl):
    item = Event("problem", "disk:/", Status.WARN, "Müll überall ✓ " * 20,
                    details="x" * 300)  # non-ASCII and long lines force a transfer encoding
    subject, text, html = render(tpl, item)
    msg = build_message(subject, text, html, sender="steward <steward@mail1.example.org>",
                        to=["root@example.org", "ops@example.org"], kind="problem",
                        message_id="<given@example.org>", date=NOW)
    back = BytesParser(policy=default).parsebytes(msg.as_bytes())
    assert back.get_content_type() == "multipart/alternative"
    plain, rich = back.iter_parts()
    assert (plain.get_content_type(), rich.get_content_type()) == ("text/plain", "text/html")
    assert (plain.get_content(), rich.get_content()) == (text, html)
    assert back["Message-ID"] == "<given@example.org>"
    assert back["Subject"] == subject
    assert back["To"] == "root@example.org, ops@example.org"
    assert back["Auto-Submitted"] == "auto-generated"
    assert back["X-Steward-Kind"] == "problem"
    assert back["Date"].datetime.timestamp() == NOW


def test_build_message_makes_a_message_id_in_the_senders_domain():
    msg = build_message("s", "t\n", "<p>h</p>\n", sender="steward@mail1.example.org",
                        to=["root@example.org"])
    assert msg["Message-ID"].endswith("@mail1.example.org>")
    assert msg["Date"]
    assert "X-Steward-Kind" not in msg
