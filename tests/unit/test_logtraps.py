"""Log traps against real files in a temp dir: news only, sticky bursts, rotation, restarts."""

from __future__ import annotations

import json
import os

import pytest

from agent.config import Config
from agent.config.schema import ConfigError, build
from agent.env import Env
from agent.model import Status
from agent.system.commands import CommandNotFound, Completed
from checks.logtraps import LogTrapCheck, LogTrapOptions
from tests.clocks import FakeClock


@pytest.fixture
def log(tmp_path):
    d = tmp_path / "log"
    d.mkdir()
    path = d / "maillog"
    path.write_text("old: error from last week\n")
    return path


@pytest.fixture
def clock():
    return FakeClock(1_000_000.0)


def options(**traps) -> LogTrapOptions:
    return build(LogTrapOptions, {"traps": traps}, "<test>", "checks.logtrap")


def file_trap(path, pattern="error", **kw):
    return options(t={"pattern": pattern, "file": str(path), **kw})


def run(opts, tmp_path, clock, name="t", **kw):
    env = Env(Config("<test>"), state_dir=tmp_path / "state", clock=clock, keeps_state=True,
              **kw)
    [r] = LogTrapCheck(opts, name).run(env)
    return r


def append(path, *lines):
    with open(path, "a") as fh:
        fh.write("".join(f"{ln}\n" for ln in lines))


def test_first_run_starts_at_the_end_so_old_history_is_not_news(log, tmp_path, clock):
    r = run(file_trap(log), tmp_path, clock)
    assert r.status is Status.OK and r.check == "logtrap:t"
    assert "no new matches of /error/" in r.summary


def test_a_match_alerts_with_count_and_latest_line(log, tmp_path, clock):
    opts = file_trap(log, status="CRIT")
    run(opts, tmp_path, clock)
    append(log, "fine", "postfix: fatal error 1", "postfix: fatal error 2")
    r = run(opts, tmp_path, clock)
    assert r.status is Status.CRIT
    assert r.summary == (f"2 new matches of /error/ in {log}; latest: postfix: fatal error 2")
    assert "fatal error 1" in r.details
    assert r.metrics[0].name == "new_matches" and r.metrics[0].value == 2
    assert not r.restartable


def test_repeats_within_the_interval_stay_one_problem_with_a_growing_suppressed_count(
        log, tmp_path, clock):
    opts = file_trap(log)
    run(opts, tmp_path, clock)
    append(log, "error A")
    assert run(opts, tmp_path, clock).status is Status.WARN
    for i in range(3):
        clock.t += 300
        append(log, f"error B{i}", f"error C{i}")
        r = run(opts, tmp_path, clock)
        assert r.status is Status.WARN
        assert f"{2 * (i + 1)} more since the first, suppressed" in r.summary
        assert r.summary.endswith(f"latest: error C{i}")
    clock.t += 600  # quiet, but still within the interval of the last match
    r = run(opts, tmp_path, clock)
    assert r.status is Status.WARN and "7 matches of /error/" in r.summary


def test_quiet_past_the_interval_returns_to_ok_saying_how_big_the_burst_was(
        log, tmp_path, clock):
    opts = file_trap(log, interval=900)
    run(opts, tmp_path, clock)
    append(log, "error 1", "error 2")
    run(opts, tmp_path, clock)
    clock.t += 899
    assert run(opts, tmp_path, clock).status is Status.WARN
    clock.t += 1
    r = run(opts, tmp_path, clock)
    assert r.status is Status.OK
    assert r.summary == f"no matches of /error/ in {log} for 15 min (the last burst had 2 matches)"
    append(log, "error 3")  # a new burst starts afresh
    r = run(opts, tmp_path, clock)
    assert r.status is Status.WARN and r.summary.startswith("1 new match of")


def test_position_and_window_survive_a_restart(log, tmp_path, clock):
    run(file_trap(log), tmp_path, clock)
    append(log, "error before restart")
    assert run(file_trap(log), tmp_path, clock).status is Status.WARN
    clock.t += 60
    append(log, "error after restart")
    # a fresh Options and check instance, as after steward restarts
    r = run(file_trap(log), tmp_path, clock)
    assert r.status is Status.WARN and "1 more since the first, suppressed" in r.summary
    assert r.metrics[0].value == 1  # the line before the restart is not read again
    state = json.loads((tmp_path / "state" / "logtraps.json").read_text())
    assert state["t"]["pos"]["off"] == log.stat().st_size
    assert state["t"]["window"]["count"] == 2


def test_rotation_reads_the_rest_of_the_old_file_then_the_new_one_each_line_once(
        log, tmp_path, clock):
    opts = file_trap(log, pattern=r"line \d+", interval=1)
    seen: list[str] = []

    def step():
        clock.t += 10  # past the interval: each run's result shows only its own news
        r = run(opts, tmp_path, clock)
        news = [ln for ln in r.details.splitlines() if ln.startswith("line ")]
        assert len(news) == r.metrics[0].value  # fewer than the 5 lines details keep
        seen.extend(news)
        return r

    step()
    append(log, "line 1", "line 2")
    step()
    append(log, "line 3")  # written after the last run, before the rename
    os.rename(log, log.with_name("maillog.1"))
    append(log.with_name("maillog.1"), "line 4")  # syslog writes on until it reopens
    append(log, "line 5", "line 6")  # the new file
    r = step()
    assert "rotated; read the rest of maillog.1" in r.details
    append(log, "line 7")
    step()
    assert sorted(seen, key=lambda s: int(s.split()[1])) == [f"line {i}" for i in range(1, 8)]
    assert len(seen) == 7


def test_rotation_finds_dated_names_and_ignores_other_files(log, tmp_path, clock):
    opts = file_trap(log)
    run(opts, tmp_path, clock)
    append(log, "error old")
    (log.parent / "maillog-20260101.gz").write_bytes(b"\x1f\x8b error")
    os.rename(log, log.with_name("maillog-20260102"))
    log.write_text("")
    r = run(opts, tmp_path, clock)
    assert r.status is Status.WARN and "error old" in r.summary


def test_copytruncate_reads_the_truncated_file_from_its_start(log, tmp_path, clock):
    opts = file_trap(log)
    run(opts, tmp_path, clock)
    append(log, "harmless " * 20)
    run(opts, tmp_path, clock)
    with open(log, "w") as fh:  # what logrotate's copytruncate does after copying
        fh.write("error right after truncation\n")
    r = run(opts, tmp_path, clock)
    assert r.status is Status.WARN and "error right after truncation" in r.summary
    assert "shrank" in r.details


def test_a_half_written_line_waits_for_its_end(log, tmp_path, clock):
    opts = file_trap(log, pattern="error$")
    run(opts, tmp_path, clock)
    with open(log, "a") as fh:
        fh.write("an err")
    assert run(opts, tmp_path, clock).status is Status.OK
    append(log, "or")
    r = run(opts, tmp_path, clock)
    assert r.status is Status.WARN and "latest: an error" in r.summary


def test_reading_is_bounded_per_run_and_says_so(log, tmp_path, clock):
    opts = build(LogTrapOptions, {"max_read": 4096, "traps": {"t": {
        "pattern": "needle", "file": str(log)}}}, "<test>", "checks.logtrap")
    run(opts, tmp_path, clock)
    append(log, *["x" * 99] * 100, "needle")
    r = run(opts, tmp_path, clock)
    assert r.status is Status.OK and "the limit per run" in r.details
    for _ in range(3):
        r = run(opts, tmp_path, clock)
    assert r.status is Status.WARN


def test_undecodable_bytes_are_replaced(log, tmp_path, clock):
    opts = file_trap(log)
    run(opts, tmp_path, clock)
    with open(log, "ab") as fh:
        fh.write(b"error \xff\xfe in latin\n")
    r = run(opts, tmp_path, clock)
    assert r.status is Status.WARN and "\ufffd" in r.summary


def test_a_missing_file_is_unknown_and_read_whole_once_it_appears(tmp_path, clock):
    path = tmp_path / "later.log"
    opts = file_trap(path)
    assert run(opts, tmp_path, clock).status is Status.OK  # first run: remembers "absent"
    r = run(opts, tmp_path, clock)
    assert r.status is Status.UNKNOWN and "no such file" in r.summary
    append(path, "error in the first line")
    assert run(opts, tmp_path, clock).status is Status.WARN


def test_a_state_dir_that_cannot_be_written_is_unknown(log, tmp_path, clock):
    (tmp_path / "state").write_text("a file where the directory should be")
    r = run(file_trap(log), tmp_path, clock)
    assert r.status is Status.UNKNOWN and "cannot keep read positions" in r.summary


def test_traps_keep_separate_positions_in_one_state_file(log, tmp_path, clock):
    opts = options(a={"pattern": "alpha", "file": str(log)},
                   b={"pattern": "beta", "file": str(log)})
    assert [c.id for c in LogTrapCheck.instances(opts, None)] == ["logtrap:a", "logtrap:b"]
    run(opts, tmp_path, clock, "a")
    run(opts, tmp_path, clock, "b")
    append(log, "alpha beta")
    assert run(opts, tmp_path, clock, "a").status is Status.WARN
    assert run(opts, tmp_path, clock, "b").status is Status.WARN
    assert run(opts, tmp_path, clock, "a").metrics[0].value == 0


@pytest.mark.parametrize("trap, problem", [
    ({"pattern": "(unclosed", "file": "/var/log/maillog"}, "not a valid regular expression"),
    ({"pattern": "x"}, "exactly one of file or journal"),
    ({"pattern": "x", "file": "/a", "journal": "b"}, "exactly one of file or journal"),
    ({"pattern": "x", "file": "relative.log"}, "absolute path"),
    ({"pattern": "x", "journal": "*", "status": "OK"}, "WARN"),
    ({"pattern": "x", "journal": "*", "interval": 0}, "out of range"),
    ({"pattern": "x", "journal": "*", "level": 3}, "unknown key"),
])
def test_bad_traps_are_config_errors_naming_the_trap(trap, problem):
    with pytest.raises(ConfigError) as e:
        build(LogTrapOptions, {"traps": {"smtp-fatal": trap}}, "steward.toml",
              "checks.logtrap")
    assert "smtp-fatal" in str(e.value) and problem in str(e.value)
    assert "checks.logtrap.traps" in str(e.value)


class FakeCommands:
    def __init__(self, outputs):
        self.outputs, self.calls = list(outputs), []

    def run(self, argv, timeout=30.0, ok_codes=(0,), input=None):
        self.calls.append((list(argv), timeout))
        out = self.outputs.pop(0)
        if isinstance(out, Exception):
            raise out
        rc, stdout, stderr = out if isinstance(out, tuple) else (0, out, "")
        return Completed(tuple(argv), rc, stdout, stderr)


def test_journal_trap_keeps_the_cursor_and_reads_binary_messages(tmp_path, clock):
    opts = options(t={"pattern": "fatal", "journal": "postfix.service"})
    entry = {"__CURSOR": "s=2", "MESSAGE": list(b"fatal: \xff bad")}
    cmds = FakeCommands(["-- cursor: s=1\n",
                         json.dumps(entry) + "\n" + json.dumps({"__CURSOR": "s=3",
                                                                "MESSAGE": "ok"})
                         + "\n-- cursor: s=3\n",
                         ""])
    assert run(opts, tmp_path, clock, commands=cmds).status is Status.OK
    r = run(opts, tmp_path, clock, commands=cmds)
    assert r.status is Status.WARN
    assert "in the journal of postfix.service; latest: fatal: \ufffd bad" in r.summary
    run(opts, tmp_path, clock, commands=cmds)
    argvs = [c[0] for c in cmds.calls]
    assert argvs[0] == ["journalctl", "--no-pager", "--show-cursor", "-n", "0"]
    assert argvs[1][-2:] == ["-u", "postfix.service"]
    assert "--after-cursor=s=1" in argvs[1] and "--after-cursor=s=3" in argvs[2]
    assert all(t <= opts.timeout for _, t in cmds.calls)


def test_journal_exit_1_without_a_word_is_no_entries_and_a_lost_cursor_starts_afresh(
        tmp_path, clock):
    opts = options(t={"pattern": "fatal", "journal": "nothing.service"})
    cmds = FakeCommands(["-- No entries --\n-- cursor: s=1\n",
                         (1, "", ""),  # what journalctl -u says when the unit has no entries
                         (1, "", "Failed to seek to cursor: Invalid argument\n"),
                         "-- cursor: s=9\n",
                         (1, "", "Failed to open journal: Permission denied\n")])
    for _ in range(2):
        assert run(opts, tmp_path, clock, commands=cmds).status is Status.OK
    r = run(opts, tmp_path, clock, commands=cmds)
    assert r.status is Status.OK and "position was not found" in r.details
    r = run(opts, tmp_path, clock, commands=cmds)
    assert "--after-cursor=s=9" in cmds.calls[-1][0]
    assert r.status is Status.UNKNOWN and "Permission denied" in r.summary


def test_missing_journalctl_is_unknown_with_the_reason(tmp_path, clock):
    opts = options(t={"pattern": "fatal", "journal": "*"})
    cmds = FakeCommands([CommandNotFound(["journalctl"], None, "", "command not found")])
    r = run(opts, tmp_path, clock, commands=cmds)
    assert r.status is Status.UNKNOWN
    assert r.summary == "cannot read the journal: journalctl: command not found"


def test_a_manual_check_reads_the_news_without_taking_it_from_the_daemon(tmp_path):
    log = tmp_path / "maillog"
    log.write_text("start\n")
    daemon = Env(Config("<test>"), state_dir=tmp_path / "state", keeps_state=True)
    manual = Env(Config("<test>"), state_dir=tmp_path / "state")
    opts = build(LogTrapOptions, {"traps": {"t": {"pattern": "fatal", "file": str(log)}}},
                 "test", "checks.logtrap")
    check = LogTrapCheck(opts, "t")
    list(check.run(daemon))  # first run: starts at the end
    with log.open("a") as fh:
        fh.write("fatal: disk\n")
    [seen] = check.run(manual)
    assert seen.status is not Status.OK
    [again] = check.run(daemon)
    assert again.status is not Status.OK, "the daemon still gets the news"
