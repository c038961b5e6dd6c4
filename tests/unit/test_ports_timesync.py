"""Port checks against real listeners on loopback; time sync against the real kernel clock."""

from __future__ import annotations

import json
import socket

import pytest

from agent.config import Config
from agent.env import Env
from agent.model import Status
from agent.ranges import Range
from checks.ports import PortCheck, PortOptions, split_target
from checks.timesync import KernelClock, TimeSyncCheck, TimeSyncOptions, read_kernel_clock


@pytest.fixture
def listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_port(target: str, **kw) -> list:
    check = PortCheck(PortOptions(**kw), target)
    return list(check.run(Env(Config("<test>"))))


def test_open_port_is_ok_with_its_connect_time(listener):
    [r] = run_port(f"127.0.0.1:{listener}")
    assert r.status is Status.OK
    assert r.check == f"port:127.0.0.1:{listener}"
    assert r.metrics[0].name == "connect_time" and r.metrics[0].uom == "s"


def test_closed_port_is_critical_with_a_remedy():
    port = free_port()
    [r] = run_port(f"127.0.0.1:{port}")
    assert r.status is Status.CRIT
    assert "refused" in r.summary
    assert f"sport = :{port}" in r.remedy


def test_connect_time_is_judged_against_the_configured_range(listener):
    [r] = run_port(f"127.0.0.1:{listener}", warn=Range.parse("@0:10"))
    assert r.status is Status.WARN


def test_unresolvable_host_is_critical():
    [r] = run_port("no-such-host.invalid:25")
    assert r.status is Status.CRIT
    assert "cannot resolve" in r.summary


@pytest.mark.parametrize("text, parsed", [
    ("localhost:25", ("localhost", 25)), ("[::1]:993", ("::1", 993)),
    ("10.0.0.1:65535", ("10.0.0.1", 65535)),
])
def test_targets_parse(text, parsed):
    assert split_target(text) == parsed


@pytest.mark.parametrize("text", ["localhost", "host:0", "host:70000", ":25", "::1:25",
                                  "[::1:25", "host:2x"])
def test_bad_targets_are_refused(text):
    with pytest.raises(ValueError):
        split_target(text)


def test_configured_ports_each_become_a_check_run_in_parallel(listener, tmp_path, steward):
    closed = free_port()
    conf = tmp_path / "steward.toml"
    conf.write_text(f'[checks.port]\ntargets = ["127.0.0.1:{listener}", "127.0.0.1:{closed}"]\n')
    conf.chmod(0o600)
    proc = steward("check", "--config", str(conf), "--only", "port", "--format", "json")
    doc = json.loads(proc.stdout)
    got = {r["check"]: r["status"] for r in doc["results"]}
    assert got == {f"port:127.0.0.1:{listener}": "OK", f"port:127.0.0.1:{closed}": "CRIT"}
    assert proc.returncode == 2


def test_kernel_clock_reads_without_changing_anything():
    a, b = read_kernel_clock(), read_kernel_clock()
    assert 0 <= a.state <= 5
    assert a.maxerror_us >= 0 and b.maxerror_us >= 0


def test_synchronised_only_below_systemds_16_second_bound():
    check = TimeSyncCheck(TimeSyncOptions())
    assert check.judge(KernelClock(0, 15_999_999, 100)).status is Status.OK
    bad = check.judge(KernelClock(5, 16_000_000, 16_000_000))
    assert bad.status is Status.WARN
    assert "NTPSynchronized=no" in bad.summary and "chronyd" in bad.remedy
    strict = TimeSyncCheck(TimeSyncOptions(unsynchronized="crit"))
    assert strict.judge(KernelClock(5, 16_000_000, 0)).status is Status.CRIT


def test_the_check_agrees_with_the_kernel():
    [r] = TimeSyncCheck(TimeSyncOptions()).run(Env(Config("<test>")))
    assert (r.status is Status.OK) == read_kernel_clock().synchronized
