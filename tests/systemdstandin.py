"""Stand-ins for ``systemd-run`` and ``systemctl list-units`` where systemd is not PID 1 (the
development machine, CI): what ``steward backup start`` needs of them, no more. systemd-run
starts the command after ``--`` in its own session with its output in ``<dir>/<unit>.log``
(as a transient unit it would outlive the caller) and records its pid; systemctl list-units
lists those still running that match the patterns, as systemd would for a oneshot in its
"activating" state. The real ones are used in the systemd container tests."""

from __future__ import annotations

import sys
from pathlib import Path

SYSTEMD_RUN = """#!{python}
import subprocess, sys
argv = sys.argv[1:]
unit = next(a.split("=", 1)[1] for a in argv if a.startswith("--unit="))
cmd = argv[argv.index("--") + 1:]
with open({units!r} + "/" + unit + ".service.log", "w") as log:
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
open({units!r} + "/" + unit + ".service.pid", "w").write(str(p.pid))
"""

SYSTEMCTL = """#!{python}
import fnmatch, glob, os, sys
if sys.argv[1:2] != ["list-units"]:
    sys.exit("systemctl stand-in: only list-units")
patterns = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else ["*"]
for path in sorted(glob.glob({units!r} + "/*.service.pid")):
    unit = os.path.basename(path)[:-len(".pid")]
    pid = int(open(path).read())
    try:  # a child of the stand-in's that ended is a zombie until reaped: not running either
        running = open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        running = False
    if running and any(fnmatch.fnmatch(unit, p) for p in patterns):
        print(f"{{unit}} loaded activating start steward stand-in")
"""


def install(bin_dir: Path, units: Path) -> Path:
    """systemd-run and systemctl in ``bin_dir``; the units' logs and pids in ``units``."""
    units.mkdir(parents=True, exist_ok=True)
    for name, body in (("systemd-run", SYSTEMD_RUN), ("systemctl", SYSTEMCTL)):
        path = bin_dir / name
        path.write_text(body.format(python=sys.executable, units=str(units)))
        path.chmod(0o755)
    return units
