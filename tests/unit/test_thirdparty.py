"""A third party's package (tests/thirdparty/steward-hello: its own pyproject, built and
installed by pip) adds a check, actions, an audit family, a source and a command to steward
with no edit to steward: a real ``steward run`` hands its action a real event; an action
that raises, hangs or is missing is an UNKNOWN result and a journal line, and the loop and the
others go on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import QUIET, REPO, run_steward

PACKAGE = Path(__file__).parents[1] / "thirdparty" / "steward-hello"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """steward-hello installed by pip (no network, no build isolation) into its own folder."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    src = build / "steward-hello"  # a copy: building writes *.egg-info next to the sources
    subprocess.run(["cp", "-r", str(PACKAGE), str(src)], check=True, timeout=30)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(target), str(src)],
                   check=True, timeout=300, capture_output=True)
    assert list(target.glob("steward_hello-1.0.dist-info/entry_points.txt"))
    return target


def _env(site: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}


def test_its_check_runs_in_steward_check_and_its_family_in_steward_audit(site, tmp_path):
    conf = tmp_path / "steward.toml"
    conf.write_text(f'[checks.hello]\npath = "{tmp_path}/flag"\n')
    conf.chmod(0o600)
    done = run_steward("hello", "--config", str(conf), env=_env(site))  # its command
    assert done.returncode == 0 and done.stdout == f"hello from {conf}\n", done.stderr
    assert "say hello" in run_steward("--help", env=_env(site)).stdout
    done = run_steward("check", "--config", str(conf), "--only", "hello", "--format", "json",
                       env=_env(site))
    assert done.returncode == 2, done.stderr
    [r] = json.loads(done.stdout)["results"]
    assert r["check"] == "hello" and r["status"] == "CRIT" and "missing" in r["summary"]
    (tmp_path / "etc").mkdir()
    done = run_steward("audit", "--sysroot", str(tmp_path), "--format", "json",
                       "--state-dir", str(tmp_path / "state"), env=_env(site))
    rules = {r["check"]: r for r in json.loads(done.stdout)["results"]}
    assert rules["audit:hello.conf"]["status"] == "WARN", sorted(rules)
    assert "echo hi > /etc/hello.conf" in rules["audit:hello.conf"]["remedy"]
    (tmp_path / "etc/hello.conf").write_text("hi\n")
    done = run_steward("audit", "--sysroot", str(tmp_path), "--format", "json",
                       "--state-dir", str(tmp_path / "state"), env=_env(site))
    rules = {r["check"]: r for r in json.loads(done.stdout)["results"]}
    assert rules["audit:hello.conf"]["status"] == "OK"


def test_steward_run_gives_its_action_real_events_despite_a_broken_a_hanging_and_a_missing_one(
        site, tmp_path):
    events, state = tmp_path / "events.jsonl", tmp_path / "state"
    conf = tmp_path / "steward.toml"
    conf.write_text(QUIET + f'[checks.hello]\npath = "{tmp_path}/flag"\ninterval = 1\n'
                    f'[notify.hello]\npath = "{events}"\n[alerts]\naction_timeout = 2\n')
    conf.chmod(0o600)
    with open(tmp_path / "stderr", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(conf),
                                 "--state-dir", str(state)], cwd=REPO, text=True,
                                env={**os.environ, **_env(site)}, stdout=subprocess.DEVNULL,
                                stderr=err)
    try:
        deadline = time.monotonic() + 30

        def seen() -> list[dict]:
            while time.monotonic() < deadline:
                if events.exists():
                    lines = [json.loads(x) for x in events.read_text().splitlines()]
                    if all(any(e["check"] == c for e in lines) for c in (
                            "hello", "action:broken", "hello:heartbeat", "action:hanging")):
                        return lines
                time.sleep(0.1)
            raise AssertionError("no events")

        lines = seen()
        hello = next(e for e in lines if e["check"] == "hello")
        assert hello["kind"] == "problem" and hello["status"] == "CRIT"
        assert hello["remedy"] == f"touch {tmp_path}/flag" and hello["since"] > 0
        beat = next(e for e in lines if e["check"] == "hello:heartbeat")  # its source
        assert beat["kind"] == "heartbeat" and beat["summary"] == "still here"
        broken = next(e for e in lines if e["check"] == "action:broken")
        assert broken["status"] == "UNKNOWN" and "broken on purpose" in broken["summary"]
        hanging = next(e for e in lines if e["check"] == "action:hanging")
        assert hanging["status"] == "UNKNOWN" and "send has not returned for" in \
            hanging["summary"]
        (tmp_path / "flag").touch()  # the check recovers: the action hears that too
        while time.monotonic() < deadline and not any(
                e["check"] == "hello" and e["kind"] == "recovery"
                for e in map(json.loads, events.read_text().splitlines())):
            time.sleep(0.1)
        status = json.loads((state / "status.json").read_text())
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    assert any(e["check"] == "hello" and e["kind"] == "recovery"
               for e in map(json.loads, events.read_text().splitlines()))
    assert status["heartbeat"]["next"] > time.time()  # the source's part of steward status
    assert status["checks"]["action:missing"]["status"] == "UNKNOWN"
    assert "did not load" in status["checks"]["action:missing"]["summary"]
    assert status["checks"]["action:broken"]["status"] == "UNKNOWN"
    assert status["checks"]["action:hanging"]["status"] == "UNKNOWN"
    log = (tmp_path / "stderr").read_text()
    assert "action broken: send failed" in log and "action missing failed to load" in log
    assert "action hanging: send has not returned" in log
