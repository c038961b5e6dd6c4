"""Shared test helpers: run the real steward command line as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_steward(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
                cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``steward ARGS`` with this interpreter; never the host's /etc/steward."""
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True,
                          timeout=timeout, env=full, cwd=cwd or REPO, check=False)


@pytest.fixture
def steward():
    return run_steward


def needs_root() -> pytest.MarkDecorator:
    return pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


# The checks that judge this machine itself (its units, clock, hardening, pending updates, the
# milter chain of the rspamd and OpenDKIM packages the tests install, certificates, its mail
# queue, the load of parallel tests) are not what daemon tests are about: a config starting
# with this leaves them out.
QUIET = ("[checks.service]\nenabled = false\n[checks.timesync]\nenabled = false\n"
         "[checks.audit]\nenabled = false\n[checks.updates]\nenabled = false\n"
         "[checks.milter]\nenabled = false\n[checks.certrenew]\nenabled = false\n"
         "[checks.load]\nenabled = false\n[checks.mailqueue]\nenabled = false\n")


def start_daemon(tmp_path: Path, config: str) -> tuple[subprocess.Popen[str], Path, Path]:
    """``steward run`` with ``config`` (TOML text), its stderr (the alerts) in a file: the
    process, that file and the state directory. The caller terminates it."""
    conf = tmp_path / "steward.toml"
    conf.write_text(config)
    conf.chmod(0o600)
    log, state = tmp_path / "stderr", tmp_path / "state"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(conf),
                                 "--state-dir", str(state)], cwd=REPO, text=True,
                                stdout=subprocess.DEVNULL, stderr=err)
    return proc, log, state
