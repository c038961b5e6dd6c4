"""The runner, in process with real Check classes, and end to end with a real plugin package
whose entry points include a check that hangs, one that raises and one that cannot import."""

from __future__ import annotations

import json
import textwrap
import time
from dataclasses import dataclass

import pytest

from agent.config import Config
from agent.config.schema import CheckOptions, number, option
from agent.env import Env
from agent.model import Check, Status
from agent.runner import Selector, run_checks


@dataclass(frozen=True)
class Opts(CheckOptions):
    delay: float = option(0.0, number(0, 60))


class Sleeper(Check):
    name = "sleeper"
    Options = Opts

    def run(self, env):
        time.sleep(self.options.delay)
        return [self.result(Status.OK, f"slept {self.options.delay}")]


class Raiser(Check):
    name = "raiser"
    Options = CheckOptions

    def run(self, env):
        raise RuntimeError("disk on fire")


class Liar(Check):
    name = "liar"
    Options = CheckOptions

    def run(self, env):
        return ["not a result"]


def env():
    return Env(Config("<test>"))


def test_checks_run_concurrently_and_overruns_become_unknown_within_the_slowest_timeout():
    checks = [Sleeper(Opts(delay=0.2, timeout=5), "fast"),
              Sleeper(Opts(delay=30, timeout=0.5), "hung1"),
              Sleeper(Opts(delay=30, timeout=0.8), "hung2"),
              Raiser(CheckOptions(timeout=5))]
    t0 = time.monotonic()
    results = {r.check: r for r in run_checks(checks, env())}
    wall = time.monotonic() - t0
    assert wall < 1.3, "bounded by the slowest timeout (0.8 s), not the sum"
    assert results["sleeper:fast"].status is Status.OK
    assert results["sleeper:hung1"].status is Status.UNKNOWN
    assert results["sleeper:hung1"].summary == "timed out after 0.5 s"
    assert results["sleeper:hung2"].summary == "timed out after 0.8 s"
    assert results["raiser"].status is Status.UNKNOWN
    assert "RuntimeError: disk on fire" in results["raiser"].summary
    assert results["sleeper:fast"].duration >= 0.2


def test_a_check_returning_something_other_than_results_is_unknown():
    [r] = run_checks([Liar(CheckOptions())], env())
    assert r.status is Status.UNKNOWN
    assert "not Result" in r.summary


@pytest.mark.parametrize("only, skip, plugin, rid, runs, wanted", [
    ((), (), "disk", "disk:/", True, True),
    (("disk",), (), "disk", "disk:/var", True, True),
    (("disk:/var*",), (), "disk", "disk:/var/log", True, True),
    (("disk:/var*",), (), "disk", "disk:/", False, False),
    (("service:postfix",), (), "service", "service", True, False),
    (("service:postfix",), (), "service", "service:postfix", True, True),
    ((), ("service:sshd",), "service", "service:sshd", False, False),
    ((), ("mem*",), "memory", "memory", False, False),
    # a result id selects the plugin, then the one instance whose result it is
    (("maildns:example.com:spf",), (), "maildns", "maildns", True, False),
    (("maildns:example.com:spf",), (), "maildns", "maildns:example.com", True, False),
    (("maildns:example.com:spf",), (), "maildns", "maildns:example.org", False, False),
    (("maildns:example.com:spf",), (), "maildns", "maildns:example.com:spf", True, True),
    (("maildns:*:spf",), (), "maildns", "maildns:example.org", True, False),
    (("maildns:*spf",), (), "maildns", "maildns:example.org", True, False),
    ((), ("maildns:example.com:spf",), "maildns", "maildns:example.com", True, True),
    ((), ("maildns:example.com:spf",), "maildns", "maildns:example.com:spf", False, False),
])
def test_only_and_skip_match_plugin_names_and_ids_by_glob(only, skip, plugin, rid, runs, wanted):
    sel = Selector(only, skip)
    assert sel.may_run(plugin, rid) is runs
    assert sel.wants(plugin, rid) is wanted


@pytest.mark.parametrize("only, skip, rid, wanted", [
    (("maildns:example.com",), (), "maildns:example.com:spf", True),
    (("maildns:example.com",), (), "maildns:example.org:spf", False),
    ((), ("maildns:example.com",), "maildns:example.com:spf", False),
])
def test_an_instance_id_selects_every_result_of_that_instance(only, skip, rid, wanted):
    assert Selector(only, skip).wants("maildns", rid) is wanted
    if only:
        assert Selector(only, skip).may_run("maildns", rid.rsplit(":", 1)[0]) is wanted


PLUGINS = '''
import time
from agent.config.schema import CheckOptions
from agent.model import Check, Status

class Hang(Check):
    name = "hang"
    Options = CheckOptions
    def run(self, env):
        time.sleep(60)
        return []

class Hang2(Hang):
    name = "hang2"

class Boom(Check):
    name = "boom"
    Options = CheckOptions
    def run(self, env):
        raise OSError(5, "Input/output error")

class Fine(Check):
    name = "fine"
    Options = CheckOptions
    def run(self, env):
        return [self.result(Status.OK, "all good")]

class NotACheck:
    name = "malformed"
'''

ENTRY_POINTS = """
[steward.checks]
hang = stwtest.plugins:Hang
hang2 = stwtest.plugins:Hang2
boom = stwtest.plugins:Boom
fine = stwtest.plugins:Fine
broken = stwtest.broken:Whatever
malformed = stwtest.plugins:NotACheck
"""


@pytest.fixture
def plugin_path(tmp_path):
    """A real installed-looking distribution (dist-info with entry points) on PYTHONPATH."""
    pkg = tmp_path / "stwtest"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "plugins.py").write_text(PLUGINS)
    (pkg / "broken.py").write_text("raise ImportError('libfoo.so.1: cannot open shared object')\n")
    info = tmp_path / "stwtest-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: stwtest\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    conf = tmp_path / "steward.toml"
    conf.write_text(textwrap.dedent("""
        [checks.hang]
        timeout = 1
        [checks.hang2]
        timeout = 1.5
        [checks.broken]
        anything = "is kept unchecked: the plugin cannot say what it accepts"
    """))
    conf.chmod(0o600)
    return tmp_path, conf


def test_hung_raising_and_unimportable_plugins_are_each_unknown_and_the_run_is_bounded(
        plugin_path, steward):
    path, conf = plugin_path
    t0 = time.monotonic()
    proc = steward("check", "--config", str(conf), "--format", "json",
                   "--only", "hang*", "--only", "boom", "--only", "broken", "--only", "fine",
                   "--only", "malformed", env={"PYTHONPATH": str(path)})
    wall = time.monotonic() - t0
    assert proc.returncode == 3, proc.stderr
    doc = json.loads(proc.stdout)
    got = {r["check"]: r for r in doc["results"]}
    assert set(got) == {"hang", "hang2", "boom", "broken", "fine", "malformed"}
    assert got["hang"]["summary"] == "timed out after 1 s"
    assert got["hang2"]["summary"] == "timed out after 1.5 s"
    assert got["boom"]["status"] == "UNKNOWN"
    assert "Input/output error" in got["boom"]["summary"]
    assert got["broken"]["status"] == "UNKNOWN"
    assert "libfoo.so.1" in got["broken"]["details"]
    assert "failed to load" in got["broken"]["summary"]
    assert "not a Check subclass" in got["malformed"]["details"]
    assert got["fine"]["status"] == "OK"
    assert doc["duration_s"] < 2.3, "the slowest timeout (1.5 s) bounds the run, not the sum"
    assert wall < 10
    assert "Traceback" not in proc.stderr


def test_a_check_result_must_not_depend_on_unrelated_plugins(plugin_path, steward):
    path, conf = plugin_path
    proc = steward("check", "--config", str(conf), "--only", "fine",
                   env={"PYTHONPATH": str(path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fine" in proc.stdout and "all good" in proc.stdout
