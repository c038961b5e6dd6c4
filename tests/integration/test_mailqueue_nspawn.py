"""The mailqueue check: its parser on real ``postqueue -j`` output (Debian's Postfix 3.7,
captured from the container below) and hostile lines, then the check itself against a real
Postfix with deferred mail in a systemd-nspawn container (slow, root)."""

from __future__ import annotations

import json
import os
import shutil
import textwrap
import time

import pytest

from agent.config import Config
from agent.env import Env
from agent.model import Status
from agent.ranges import Range
from agent.system.commands import CommandRunner
from checks.mailqueue import MailQueueCheck, MailQueueOptions, parse_postqueue
from checks.services import ServiceOptions

SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"
REFUSED = "connect to 127.0.0.1[127.0.0.1]:2526: Connection refused"
ARRIVAL = 1795410599
# postqueue -j of Postfix 3.7.11: three deferred messages (one with two recipients, one deferred
# while Postfix had the destination suspended), one put on hold (postsuper -h), and one caught
# in the active queue before its first attempt.
SAMPLE = "".join(json.dumps(e) + "\n" for e in [
    {"queue_name": "active", "queue_id": "1D8D32101EB", "arrival_time": ARRIVAL + 30,
     "message_size": 255, "forced_expire": False, "sender": "root@steward-test.localdomain",
     "recipients": [{"address": "other@c.invalid"}]},
    {"queue_name": "deferred", "queue_id": "8DF99211F6F", "arrival_time": ARRIVAL,
     "message_size": 259, "forced_expire": False, "sender": "root@steward-test.localdomain",
     "recipients": [{"address": "someone@unreachable.invalid", "delay_reason": REFUSED}]},
    {"queue_name": "deferred", "queue_id": "874CB211F78", "arrival_time": ARRIVAL + 10,
     "message_size": 259, "forced_expire": False, "sender": "root@steward-test.localdomain",
     "recipients": [{"address": "someone@unreachable.invalid",
                     "delay_reason": "delivery temporarily suspended: " + REFUSED}]},
    {"queue_name": "deferred", "queue_id": "92D0A21001C", "arrival_time": ARRIVAL + 20,
     "message_size": 255, "forced_expire": False, "sender": "root@steward-test.localdomain",
     "recipients": [{"address": "a@b.invalid", "delay_reason": "Host or domain name not "
                     "found. Name service error for name=b.invalid type=MX: Host not found, "
                     "try again"},
                    {"address": "other@c.invalid", "delay_reason": REFUSED}]},
    {"queue_name": "hold", "queue_id": "85385211F7A", "arrival_time": ARRIVAL - 5000,
     "message_size": 259, "forced_expire": False, "sender": "root@steward-test.localdomain",
     "recipients": [{"address": "someone@unreachable.invalid", "delay_reason": REFUSED}]},
])


def check(**kw) -> MailQueueCheck:
    return MailQueueCheck(MailQueueOptions(**kw))


def metrics(r) -> dict[str, float]:
    return {m.name: m.value for m in r.metrics}


def test_real_postqueue_output_is_tallied_per_queue_with_the_oldest_deferred():
    q = parse_postqueue(SAMPLE)
    assert q.counts == {"active": 1, "deferred": 3, "hold": 1, "incoming": 0}
    assert q.oldest_deferred == ARRIVAL  # the held message is older, but not deferred
    assert q.reasons.most_common(1) == [(REFUSED, 3)]
    assert q.skipped == []


def test_a_suspended_destination_counts_under_the_cause_that_suspended_it():
    q = parse_postqueue(SAMPLE)
    assert not any("suspended" in r for r in q.reasons)
    odd = json.dumps({"queue_name": "deferred", "recipients": [
        {"delay_reason": "delivery temporarily suspended:"},
        {"delay_reason": "Delivery  temporarily suspended: delivery temporarily suspended: x"}]})
    assert parse_postqueue(odd).reasons == {"delivery temporarily suspended:": 1, "x": 1}


def test_small_young_backlog_is_ok_and_says_why_mail_waits():
    r = check().judge(parse_postqueue(SAMPLE), ARRIVAL + 600)
    assert r.status is Status.OK
    assert r.summary == (f"1 active, 3 deferred, 1 hold (oldest 10 min); most common reason: "
                         f"{REFUSED} (3 recipients)")
    assert metrics(r) == {"active": 1, "deferred": 3, "hold": 1, "incoming": 0,
                          "oldest_deferred_age": 600}
    assert r.restartable is False and r.depends_on == ("service:postfix",)
    assert r.unit == "postfix" and r.remedy == ""


def test_old_deferred_mail_warns_then_goes_critical_by_the_minute_ranges():
    q = parse_postqueue(SAMPLE)
    warn = check().judge(q, ARRIVAL + 61 * 60)
    assert warn.status is Status.WARN
    assert "postqueue -p" in warn.remedy and "postqueue -f" in warn.remedy
    age = next(m for m in warn.metrics if m.name == "oldest_deferred_age")
    assert (age.uom, age.warn, age.crit) == ("s", "3600", "14400")
    assert check().judge(q, ARRIVAL + 241 * 60).status is Status.CRIT


def test_deferred_count_is_judged_against_its_ranges():
    q = parse_postqueue(SAMPLE)
    assert check(deferred_warn=Range.parse("2")).judge(q, ARRIVAL).status is Status.WARN
    assert check(deferred_crit=Range.parse("2")).judge(q, ARRIVAL).status is Status.CRIT
    deferred = next(m for m in check().judge(q, ARRIVAL).metrics if m.name == "deferred")
    assert (deferred.warn, deferred.crit) == ("50", "500")


def test_empty_queue_is_ok_with_zero_counts():
    for text in ("", "\n\n", "   \n"):
        r = check().judge(parse_postqueue(text), ARRIVAL)
        assert r.status is Status.OK
        assert r.summary == "0 deferred"
        assert all(v == 0 for v in metrics(r).values())


@pytest.mark.parametrize("line", [
    "Mail queue is empty", "{", "[]", "null", '"deferred"', "42",
    '{"queue_id": "X"}', '{"queue_name": null}', '{"queue_name": "../../etc"}',
    '{"queue_name": 7, "recipients": []}',
])
def test_lines_that_are_not_queue_entries_are_skipped_and_reported(line):
    q = parse_postqueue(SAMPLE + line + "\n")
    assert q.counts["deferred"] == 3 and len(q.skipped) == 1
    r = check().judge(q, ARRIVAL)
    assert "unparsed line" in r.details


@pytest.mark.parametrize("entry", [
    {"queue_name": "deferred", "arrival_time": "yesterday", "recipients": "x"},
    {"queue_name": "deferred", "arrival_time": 1e400, "recipients": [None, 3, {}]},
    {"queue_name": "deferred", "arrival_time": True,
     "recipients": [{"delay_reason": ["a list"]}, {"delay_reason": "  "}]},
    {"queue_name": "deferred"},
])
def test_odd_fields_still_count_the_message_without_inventing_an_age(entry):
    q = parse_postqueue(json.dumps(entry))
    assert q.counts["deferred"] == 1 and q.oldest_deferred is None and not q.reasons
    r = check().judge(q, ARRIVAL)
    assert r.status is Status.OK and metrics(r)["oldest_deferred_age"] == 0


def test_maildrop_counts_as_incoming_and_long_reasons_are_shortened():
    long_reason = "x" * 300
    text = (json.dumps({"queue_name": "maildrop", "queue_id": "A"}) + "\n"
            + json.dumps({"queue_name": "deferred", "arrival_time": ARRIVAL,
                          "recipients": [{"address": "a@b", "delay_reason": long_reason}]}))
    r = check().judge(parse_postqueue(text), ARRIVAL)
    assert metrics(r)["incoming"] == 1
    assert "x" * 97 + "..." in r.summary and len(r.summary) < 200


def test_without_postqueue_the_check_is_silent_unless_postfix_is_watched(tmp_path):
    runner = CommandRunner({"PATH": str(tmp_path)})
    assert list(check().run(Env(Config("<test>"), commands=runner))) == []
    watched = Config("<test>", checks={"service": ServiceOptions(units=("postfix",))})
    [r] = check().run(Env(watched, commands=runner))
    assert r.status is Status.UNKNOWN and r.summary == "postqueue not found"
    assert r.restartable is False and r.depends_on == ("service:postfix",)


@pytest.mark.skipif(shutil.which("postqueue", path=SBIN) is None
                    or os.path.exists("/etc/postfix/main.cf"),
                    reason="needs postqueue installed with Postfix left unconfigured")
def test_an_installed_but_unconfigured_postfix_is_silent_unless_watched(tmp_path):
    """Debian's postfix package with "No configuration" has postqueue but no main.cf."""
    runner = CommandRunner({"PATH": SBIN})
    assert list(check().run(Env(Config("<test>"), commands=runner, sysroot=tmp_path))) == []
    watched = Config("<test>", checks={"service": ServiceOptions(units=("postfix",))})
    (tmp_path / "etc/postfix").mkdir(parents=True)
    [r] = check().run(Env(watched, commands=runner, sysroot=tmp_path))
    assert r.status is Status.UNKNOWN and r.summary.startswith("cannot read the queue")


# -- against a real Postfix -----------------------------------------------------------------

INSIDE = textwrap.dedent("""\
    import json, sys
    sys.path.insert(0, "/opt/steward")
    from agent.config import Config
    from agent.env import Env
    from agent.ranges import Range
    from checks.mailqueue import MailQueueCheck, MailQueueOptions
    from checks.services import ServiceOptions
    env = Env(Config("<test>", checks={"service": ServiceOptions(units=("postfix",))}))
    opts = MailQueueOptions(deferred_warn=Range.parse("2"))
    print(json.dumps([{"status": r.status.name, "summary": r.summary, "details": r.details,
                       "restartable": r.restartable,
                       "metrics": {m.name: m.value for m in r.metrics}}
                      for r in MailQueueCheck(opts).run(env)]))
    """)


@pytest.fixture(scope="module")
def box():
    from tests.integration.boxed import install
    from tests.integration.nspawn import Container, build_rootfs
    with Container(build_rootfs()) as c:
        # Debian's "Local only" Postfix bounces remote mail at once (default_transport =
        # error); send it to a loopback port nobody listens on, so it is deferred.
        c.run(["postconf", "-e", "default_transport=smtp", "relay_transport=smtp",
               "relayhost=[127.0.0.1]:2526"])
        c.run(["postfix", "reload"])
        install(c)
        c.write_file("/usr/local/lib/steward-check.py", INSIDE)
        yield c


def nspawn_skip() -> str | None:
    from tests.integration.nspawn import nspawn_available
    return nspawn_available()


def inside_check(box, user: str = "") -> dict:
    as_user = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user \
        else []
    proc = box.run([*as_user, "python3", "/usr/local/lib/steward-check.py"], timeout=60,
                   check=False)
    assert proc.returncode == 0, proc.stderr
    [r] = json.loads(proc.stdout)
    return r


def deferred_ids(box) -> list[str]:
    out = box.run(["postqueue", "-j"], check=False).stdout
    return [e["queue_id"] for e in map(json.loads, out.splitlines())
            if e["queue_name"] == "deferred"]


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.skipif(nspawn_skip() is not None, reason=nspawn_skip() or "")
def test_deferred_mail_in_a_real_postfix_is_counted_aged_and_explained(box):
    sent = time.time()
    for i in range(3):
        box.write_file(f"/root/msg{i}", f"Subject: steward test {i}\n\nbody {i}\n")
        box.run(["sh", "-c", f"/usr/sbin/sendmail -f root someone@unreachable.invalid "
                 f"< /root/msg{i}"])
    deadline = time.monotonic() + 60
    while len(deferred_ids(box)) < 3:
        assert time.monotonic() < deadline, box.run(["postqueue", "-p"], check=False).stdout
        box.run(["postqueue", "-f"], check=False)
        time.sleep(1)
    # A flush may still have one message back in the active queue for a moment: let it settle.
    r = inside_check(box)
    while not r["summary"].endswith("(3 recipients)") and time.monotonic() < deadline:
        time.sleep(1)
        r = inside_check(box)
    waited = time.time() - sent
    assert r["status"] == "WARN", r  # 3 deferred is above the warn range "2"
    m = r["metrics"]
    assert (m["deferred"], m["hold"], m["incoming"]) == (3, 0, 0)
    assert 0 <= m["oldest_deferred_age"] <= waited + 2
    assert r["summary"].startswith("3 deferred (oldest ")
    assert r["summary"].endswith("most common reason: connect to 127.0.0.1[127.0.0.1]:2526: "
                                 "Connection refused (3 recipients)")
    assert r["restartable"] is False


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.skipif(nspawn_skip() is not None, reason=nspawn_skip() or "")
def test_held_mail_is_counted_apart_and_a_stopped_postfix_is_unknown_to_non_root(box):
    while len(deferred_ids(box)) < 1:  # the test above queued mail; queue one if run alone
        box.write_file("/root/msg-held", "Subject: held\n\nheld\n")
        box.run(["sh", "-c", "/usr/sbin/sendmail -f root x@y.invalid < /root/msg-held"])
        time.sleep(2)
    first = deferred_ids(box)[0]
    box.run(["postsuper", "-h", first])
    r = inside_check(box)
    assert r["metrics"]["hold"] == 1 and r["metrics"]["deferred"] == len(deferred_ids(box))
    assert "1 hold" in r["summary"]
    box.run(["postfix", "stop"], timeout=60)
    # root's postqueue reads the queue files directly when Postfix is down; others cannot.
    assert inside_check(box)["metrics"]["hold"] == 1
    r = inside_check(box, user="65534")  # nobody:nogroup
    assert r["status"] == "UNKNOWN", r
    assert "mail system is down" in r["summary"]
