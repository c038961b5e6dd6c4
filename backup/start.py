"""``steward backup start``: a backup started the way the daemon starts one when the steward
drive is plugged in, as its own transient systemd unit (restarting steward, or closing the
Cockpit page that asked for it, cannot kill it), refused while another backup or a patch run is
active. What it does meanwhile and at its end, ``steward backup last`` tells."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.system.commands import CommandError
from agent.system.systemd import active_units, run_transient

if TYPE_CHECKING:
    from agent.env import Env

FOLDER_UNIT_PREFIX = "steward-backup"  # a backup to [backup] target; the USB one's is usbimage's
STARTED, BUSY, NOT_STARTED = 0, 1, 3


def unit_argv(args: argparse.Namespace, env: Env) -> list[str]:
    """The ``steward backup create`` the unit runs, with this command's state and config (a
    unit inherits neither the environment nor the working directory)."""
    argv = [sys.executable, "-m", "agent", "backup", "create"]
    if args.usb:
        argv.append("--usb")
        if args.device:
            argv += ["--device", args.device]
    elif args.target is not None:
        argv += ["--target", os.path.abspath(args.target)]
    if args.source is not None:
        argv += ["--source", os.path.abspath(args.source)]
    argv += ["--state-dir", os.path.abspath(env.state_dir)]
    source = env.config.source
    if source.startswith("/") or Path(source).is_file():
        argv += ["--config", os.path.abspath(source)]
    return argv


def start(args: argparse.Namespace, env: Env) -> int:
    from usbimage.monitor import BACKUP_TIMEOUT_MIN, BUSY_UNITS, UNIT_PREFIX

    prefix = UNIT_PREFIX if args.usb else FOLDER_UNIT_PREFIX
    unit = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(env.clock.now()))}"
    where = "the steward USB drive" if args.usb else "the backup target"
    doc: dict[str, Any] = {"started": False, "unit": None, "busy": [], "message": ""}
    try:
        busy = active_units(env.commands, BUSY_UNITS)
        if busy:
            doc.update(busy=busy, message=f"not started: {', '.join(busy)} still running "
                       "(steward does not back up while another backup or a patch run is "
                       "active)")
            code = BUSY
        else:
            name = run_transient(env.commands, unit, unit_argv(args, env),
                                 description=f"steward: backup to {where}",
                                 timeout_minutes=BACKUP_TIMEOUT_MIN)
            doc.update(started=True, unit=name, message=f"backup started as {name}; "
                       f"steward backup last shows its progress and its report "
                       f"(journalctl -u {name} its output)")
            code = STARTED
    except CommandError as e:
        doc["message"] = f"backup could not be started: {e}"
        code = NOT_STARTED
    if args.format == "json":
        print(json.dumps(doc, indent=1))
    else:
        print(f"steward: {doc['message']}", file=sys.stdout if code == STARTED else sys.stderr)
    return code
