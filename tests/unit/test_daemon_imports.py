"""`steward run` at start loads no module it does not need: each one stays in the daemon's RSS
for as long as it runs (the goal is <= 30 MB with every feature on; bench/recovery measures it).
This guards the lazy imports by name; the figures are the bench's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What `steward run` imports before its first pass: the whole CLI parser (every subcommand's
# add_parser runs), then cmd_run's own imports (agent/cli.py).
START = """
import json, sys
from agent.cli import build_parser
build_parser()
from agent.notify import for_config
from agent.supervisor import Supervisor
from agent.system.unitwatch import UnitWatcher
print(json.dumps(sorted(sys.modules)))
"""

# Loaded only by the commands, checks or events that use them (name: why it is heavy or rare).
LAZY = {
    "patch.rebooting": "patch apply / after a patch reboot only",
    "patch.dnfparse": "patch apply and the updates check's dnf run",
    "patch.health": "patch apply",
    "patch.apply": "patch apply",
    "patch.dnf": "the updates check, only where dnf exists",
    "patch.window": "only with a [patch] window",
    "xml.etree.ElementTree": "dnf updateinfo parsing",
    "checks.audit.child": "the audit runs in a child process",
    "checks.audit.postfix": "audit rule families load in the child",
    "checks.audit.sshd": "audit rule families load in the child",
    "usbimage.monitor": "started by the supervisor only when enabled",
    "usbimage.restoredisk": "steward restore",
    "pyudev": "never in the daemon (uevents are read from a netlink socket)",
    "checks.maildns": "steward check --only maildns",
    "email.mime.text": "building a mail: at send time",
    "smtplib": "sending a mail",
    "tarfile": "backup and restore",
    "asyncio": "unused",
    "multiprocessing": "unused",
    "jinja2": "not a dependency of the daemon",
    "requests": "not a dependency of the daemon",
    "dns": "dnspython: not a dependency of the daemon",
    "ssl": "TLS probes load it when they run",
    "psutil": "resource checks load it when they run",
}


def test_steward_run_start_loads_no_lazy_module() -> None:
    out = subprocess.run([sys.executable, "-c", START], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    loaded = set(json.loads(out))
    assert "agent.supervisor" in loaded and "patch.outcome" in loaded  # the probe is real
    early = {m: why for m, why in LAZY.items() if m in loaded}
    assert not early, f"loaded at `steward run` start: {early}"
