"""Journal traps against a real journald (in a systemd-nspawn container), run with the
container's python3 on this checkout, as on the appliance."""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.boxed import install
from tests.integration.nspawn import Container, build_rootfs, nspawn_available

pytestmark = [pytest.mark.slow, pytest.mark.root,
              pytest.mark.skipif(nspawn_available() is not None,
                                 reason=nspawn_available() or "")]

# One run of a trap inside the container; prints the result as JSON. The state directory
# persists between runs, as /var/lib/steward does between steward's runs.
RUNNER = """
import json, sys
sys.path.insert(0, "/opt/steward")
from agent.config import Config
from agent.config.schema import build
from agent.env import Env
from checks.logtraps import LogTrapCheck, LogTrapOptions
from pathlib import Path
traps = json.loads(sys.argv[1])
opts = build(LogTrapOptions, {"traps": traps}, "<test>", "checks.logtrap")
env = Env(Config("<test>"), state_dir=Path("/var/lib/stw-test"), keeps_state=True)
for name in sys.argv[2:]:
    [r] = LogTrapCheck(opts, name).run(env)
    print(json.dumps({"check": r.check, "status": r.status.name, "summary": r.summary,
                      "details": r.details, "new": r.metrics[0].value if r.metrics else None}))
"""
# systemd's "Started ..." line, which -u shows too, names the command line unless told
# otherwise; it must not match.
DESC = "--description=stw noise"
TRAPS = {"all": {"pattern": "stw-fatal", "journal": "*"},
         "unit": {"pattern": "stw-fatal", "journal": "stw-noise.service"}}


@pytest.fixture(scope="module")
def box():
    with Container(build_rootfs()) as c:
        install(c)
        c.write_file("/opt/stw-trap.py", RUNNER)
        # Settles first and lingers after: journald names a line's unit from the writer's
        # cgroup, and in this container (cgroup v1) a line written at once sometimes got no
        # _SYSTEMD_UNIT, so -u missed it (long-lived daemons are not affected).
        c.write_file("/opt/stw-noise.sh", "#!/bin/sh\nsleep 0.5\nprintf \"$1\\n\"\nsleep 1\n",
                     mode=0o755)
        yield c


def trap_run(box, *names):
    out = box.run(["python3", "/opt/stw-trap.py", json.dumps(TRAPS), *names]).stdout
    return {r["check"].split(":", 1)[1]: r for r in map(json.loads, out.splitlines())}


def wait_journaled(box, marker, timeout=10.0):
    """journald stores asynchronously: wait until the entry can be read back."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # json: a binary message comes out as a list of numbers, not as undecodable bytes
        out = box.run(["journalctl", "--no-pager", "-o", "json", "--grep", marker],
                      check=False).stdout
        if out.strip():
            return
        time.sleep(0.2)
    raise AssertionError(f"{marker!r} never reached the journal:\n{box.diagnostics()}")


def test_journal_traps_see_only_new_entries_once_per_unit_and_in_all(box):
    box.run(["logger", "-t", "stw-test", "stw-fatal from before the first run"])
    wait_journaled(box, "from before the first run")
    first = trap_run(box, "all", "unit")
    assert first["all"]["status"] == "OK" and first["unit"]["status"] == "OK", first

    box.run(["logger", "-t", "stw-test", "stw-fatal from logger"])
    box.run(["systemd-run", "--wait", "-q", "-u", "stw-noise.service", DESC, "/opt/stw-noise.sh",
             r"stw-fatal from the unit \377 binary"])
    wait_journaled(box, "from the unit")
    wait_journaled(box, "from logger")
    r = trap_run(box, "all", "unit")
    assert r["all"]["status"] == "WARN" and r["all"]["new"] == 2, r
    assert r["unit"]["status"] == "WARN" and r["unit"]["new"] == 1, r
    assert "in the journal of stw-noise.service; latest: stw-fatal from the unit " \
           "\ufffd binary" in r["unit"]["summary"]

    again = trap_run(box, "all", "unit")  # nothing new: still WARN (sticky), no new matches
    assert again["all"]["new"] == 0 and again["unit"]["new"] == 0, again
    assert again["all"]["status"] == "WARN"


def test_a_lost_journal_position_starts_again_at_the_end_and_says_so(box):
    state = box.root / "var/lib/stw-test/logtraps.json"
    trap_run(box, "unit")
    data = json.loads(state.read_text())
    data["unit"]["pos"]["cursor"] = "s=0123;i=1;b=2;m=3;t=4;x=5"
    state.write_text(json.dumps(data))
    r = trap_run(box, "unit")["unit"]
    assert "position was not found" in r["details"], r
    box.run(["systemd-run", "--wait", "-q", "-u", "stw-noise.service", DESC, "/opt/stw-noise.sh",
             "stw-fatal after the reset"])
    wait_journaled(box, "after the reset")
    r = trap_run(box, "unit")["unit"]
    assert r["new"] == 1 and "latest: stw-fatal after the reset" in r["summary"], r
