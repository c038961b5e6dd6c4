"""The Clock (agent/system/clock.py) is steward's only wall-clock source: no module of its
packages reads the time of day itself (``time.time()``, ``datetime.now()``, ``time.strftime``
without a time...), so that tests drive time through a fake Clock (tests/clocks.py) instead of
depending on today. ``time.monotonic()`` for intervals and deadlines is fine. Read from the
source with ``ast``, every module of every package."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "checks", "backup", "patch", "usbimage", "actions")
CLOCK = "agent/system/clock.py"

# Files that still read the wall clock themselves, while their owner rewrites them (paths from
# the repository's root, e.g. "agent/supervisor.py"). This list must shrink to empty, and stay
# so: a file leaves it as soon as it reads the time through the Clock (the last test fails
# while a file stands here that no longer needs to). It was to hold agent/supervisor.py,
# agent/notify/{commands,outbox,mailer}.py and actions/webhook.py; by the time this test
# landed their rewrite had already brought their time in through the Clock.
ALLOWLIST: frozenset[str] = frozenset()

# module -> functions that read the wall clock whatever their arguments
ALWAYS = {"time": {"time", "time_ns"},
          "datetime": {"now", "utcnow", "today"}, "date": {"today"}}
# time functions that read the wall clock when called without the time to show
WITHOUT_TIME = {"localtime": 0, "gmtime": 0, "ctime": 0, "asctime": 0, "strftime": 1}


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> ``time``, ``datetime`` or ``date`` (modules and classes, as imported)."""
    names = {"time": "time", "datetime": "datetime", "date": "date"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update({a.asname: a.name for a in node.names
                          if a.asname and a.name in ("time", "datetime")})
        elif isinstance(node, ast.ImportFrom) and node.module == "datetime":
            names.update({a.asname: a.name for a in node.names
                          if a.asname and a.name in ("datetime", "date")})
    return names


def _owner(node: ast.expr, names: dict[str, str]) -> str:
    """``time`` for ``time.x``, ``datetime`` for ``datetime.x`` and ``datetime.datetime.x``."""
    if isinstance(node, ast.Name):
        return names.get(node.id, "")
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
            names.get(node.value.id) == "datetime":
        return node.attr
    return ""


def wall_clock_reads(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """(line, what) for each read of the wall clock in ``source``: a call of one of ALWAYS
    (or a reference to time.time, as a default argument is), a WITHOUT_TIME function called
    without the time, or those functions imported by name from time/datetime."""
    tree = ast.parse(source, filename)
    names = _aliases(tree)
    calls = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("time", "datetime"):
            banned = ALWAYS["time"] | set(WITHOUT_TIME) if node.module == "time" else set()
            found += [(node.lineno, f"from {node.module} import {a.name}")
                      for a in node.names if a.name in banned]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner, name = _owner(node.func.value, names), node.func.attr
            if owner == "time" and WITHOUT_TIME.get(name, -1) == len(node.args) \
                    and not node.keywords:
                found.append((node.lineno, f"time.{name}() without a time"))
            elif name in ALWAYS.get(owner, ()):
                found.append((node.lineno, f"{owner}.{name}()"))
        elif isinstance(node, ast.Attribute) and id(node) not in calls and \
                _owner(node.value, names) == "time" and node.attr in ALWAYS["time"]:
            found.append((node.lineno, f"time.{node.attr} (passed as a clock)"))
    return sorted(found)


def _modules() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]


def test_the_scan_sees_each_kind_of_wall_clock_read() -> None:
    source = ("import time, datetime\nfrom datetime import date, datetime as dt\n"
              "from time import time as now\n"
              "a = time.time()\nb = datetime.datetime.now()\nc = dt.utcnow()\n"
              "d = date.today()\ne = time.strftime('%H')\nf = time.localtime()\n"
              "def g(clock=time.time): ...\n"
              # not reads: a time shown, an interval, a timestamp converted
              "h = time.strftime('%H', time.localtime(a))\ni = time.monotonic()\n"
              "j = datetime.datetime.fromtimestamp(a)\n")
    assert [line for line, _ in wall_clock_reads(source)] == [3, 4, 5, 6, 7, 8, 9, 10]
    assert dict(wall_clock_reads(source))[10] == "time.time (passed as a clock)"


def test_only_the_clock_reads_the_wall_clock() -> None:
    modules = _modules()
    assert len(modules) > 100  # every package was read
    bad = []
    for path in modules:
        rel = path.relative_to(ROOT).as_posix()
        if rel == CLOCK or rel in ALLOWLIST:
            continue
        bad += [f"{rel}:{line}: {what}"
                for line, what in wall_clock_reads(path.read_text(), rel)]
    assert not bad, ("read the time through the Clock (env.clock, or a clock or now "
                     "passed down), not directly:\n" + "\n".join(bad))


def test_the_allowlist_holds_only_files_that_still_need_it() -> None:
    assert wall_clock_reads((ROOT / CLOCK).read_text())  # the scan would see the Clock's own
    done = sorted(rel for rel in ALLOWLIST
                  if not (ROOT / rel).exists() or not wall_clock_reads((ROOT / rel).read_text()))
    assert not done, f"no wall-clock read left: take {', '.join(done)} off ALLOWLIST"
