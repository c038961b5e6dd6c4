"""steward's Cockpit page in a real Cockpit (cockpit-ws with a local bridge on loopback) and a
real headless Chromium, beside a real ``steward run``: what an administrator sees."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cockpit.cdp import Browser, chromium
from tests.conftest import QUIET, REPO, start_daemon
from tests.systemdstandin import install as systemd_standins

pytestmark = pytest.mark.slow
WS = next((p for p in ("/usr/lib/cockpit/cockpit-ws", "/usr/libexec/cockpit-ws")
           if os.path.exists(p)), None)
# The screenshots linked from the README are rewritten only when asked for (so that a test run
# leaves the work tree clean): STEWARD_SCREENSHOTS=1; otherwise they go to the test's tmp dir.
COMMITTED_SHOTS = REPO / "docs" / "screenshots"
TABS = ("overview", "security", "maildomain", "backups", "patching", "notifications")

if WS is None or chromium() is None:
    pytest.skip("needs cockpit-ws, cockpit-bridge and chromium (./bootstrap installs them)",
                allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bin_dir(tmp: Path, body: str | None = None) -> Path:
    """A PATH folder whose ``steward`` is this checkout (or ``body``, a stand-in script)."""
    d = tmp / "bin"
    d.mkdir()
    script = body or f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m agent "$@"\n'
    (d / "steward").write_text(script)
    (d / "steward").chmod(0o755)
    return d


class Cockpit:
    """cockpit-ws serving the page from this checkout; the bridge (and so every command the
    page spawns) gets ``path`` as PATH and ``state`` as STEWARD_STATE_DIR."""

    def __init__(self, tmp: Path, path: str, state: Path) -> None:
        share = tmp / "share" / "cockpit"
        share.mkdir(parents=True)
        (share / "steward").symlink_to(REPO / "cockpit")
        self.port = free_port()
        env = dict(os.environ, PATH=path, STEWARD_STATE_DIR=str(state),
                   XDG_DATA_DIRS=f"{tmp / 'share'}:/usr/share", LC_ALL="C.UTF-8")
        self.log = open(tmp / "cockpit-ws.log", "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen([WS, "--port", str(self.port), "--address", "127.0.0.1",
                                      "--local-session=cockpit-bridge"], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        self.url = f"http://127.0.0.1:{self.port}/cockpit/@localhost/steward/index.html"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("cockpit")
    # The "service" steward watches: a listener on loopback that the test takes down.
    service = socket.socket()
    service.bind(("127.0.0.1", 0))
    service.listen(8)
    port = service.getsockname()[1]
    # A backup target holding one real generation, for the Backups tab.
    src, target = tmp / "src", tmp / "target"
    (src / "etc").mkdir(parents=True)
    target.mkdir()
    (src / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (src / "etc" / "big").write_bytes(os.urandom(3 << 20))
    made = subprocess.run([sys.executable, "-m", "agent", "backup", "create", "--source",
                           str(src), "--target", str(target), "--state-dir", str(tmp / "bstate")],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert made.returncode == 0, made.stderr
    # The load of a shared CI machine is not the page's business (QUIET leaves it out).
    daemon, log, state = start_daemon(tmp, QUIET +
                                      f'[backup]\ntarget = "{target}"\nsource = "{src}"\n'
                                      # long enough for "back up now" to show its progress
                                      'post_hooks = [["/bin/sleep", "3"]]\n'
                                      f'[checks.port]\ntargets = ["127.0.0.1:{port}"]'
                                      "\ninterval = 1\n")
    bindir = bin_dir(tmp)
    # systemd is not PID 1 here: "back up now" starts its unit through stand-ins (the
    # systemd container test has the real ones).
    units = systemd_standins(bindir, tmp / "units")
    path = f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    ws = Cockpit(tmp, path, state)
    browser = Browser(tmp / "profile")
    try:
        shots = COMMITTED_SHOTS if os.environ.get("STEWARD_SCREENSHOTS") == "1" \
            else tmp / "screenshots"
        yield {"tmp": tmp, "service": service, "port": port, "daemon": daemon, "state": state,
               "conf": tmp / "steward.toml", "ws": ws, "browser": browser, "log": log,
               "units": units, "target": target, "shots": shots}
    finally:
        browser.close()
        ws.stop()
        if daemon.poll() is None:
            daemon.terminate()
            daemon.wait(10)
        service.close()


def row(b: Browser, check: str) -> Any:
    return b.js(f"""(() => {{ const tr = document.querySelector('#checks tr[data-check="{check}"]');
        return tr ? Array.from(tr.children).map(td => td.textContent) : null }})()""")


def status(world: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "agent", "status", "--format", "json",
                          "--state-dir", str(world["state"])], cwd=REPO, capture_output=True,
                         text=True, timeout=30, check=False)
    return dict(json.loads(out.stdout))


def test_a_service_going_down_appears_crit_with_its_remedy_within_5_s(world):
    b: Browser = world["browser"]
    check = f"port:127.0.0.1:{world['port']}"
    b.open(world["ws"].url)
    b.wait(f"""(() => {{ const r = document.querySelector('#checks tr[data-check="{check}"]');
        return r && r.children[0].textContent === 'OK' }})()""", timeout=30)
    world["service"].close()
    t0 = time.monotonic()
    b.wait(f"""(() => {{ const r = document.querySelector('#checks tr[data-check="{check}"]');
        return r && r.children[0].textContent === 'CRIT' }})()""", timeout=5)
    seen = time.monotonic() - t0
    cells = row(b, check)
    assert cells[0] == "CRIT" and "Connection refused" in cells[3]
    assert "ss -ltnp" in cells[4], cells  # the remedy, as steward's check gives it
    # Problems first, and the machine's worst status at the top.
    assert b.js("document.querySelector('#checks tbody tr').dataset.check") == check
    assert b.js("document.getElementById('worst').textContent").startswith("CRIT")
    print(f"CRIT shown {seen:.1f} s after the service went down")


def test_turning_maintenance_on_in_the_page_shows_in_steward_status(world):
    b: Browser = world["browser"]
    assert status(world)["maintenance"]["active"] is False
    b.js("document.getElementById('maint-for').value = '20m'")
    b.js("document.getElementById('maint-on').click()")
    b.wait("document.getElementById('maint-state').textContent.includes('whole machine until')")
    st = status(world)
    assert st["maintenance"]["active"] is True
    assert 19 * 60 < st["maintenance"]["until"] - time.time() <= 20 * 60
    b.js("document.getElementById('maint-off').click()")
    b.wait("document.getElementById('maint-state').textContent.startsWith('Maintenance is off')")
    assert status(world)["maintenance"]["active"] is False


def test_run_checks_now_updates_the_table_without_waiting_for_the_daemon(world):
    b: Browser = world["browser"]
    # A check the daemon does not run (its interval is a day): only "run now" can show it.
    conf: Path = world["conf"]
    b.js("document.getElementById('check-now').click()")
    b.wait("document.getElementById('check-state').textContent.startsWith('Checked at')",
           timeout=60)
    assert b.js("document.getElementById('check-state').textContent").endswith("CRIT")
    assert conf.exists()
    # The page ran steward check with the daemon's config: the same port check is in it.
    assert row(b, f"port:127.0.0.1:{world['port']}")[0] == "CRIT"


def cells(b: Browser, table: str) -> dict[str, str]:
    """A two-column table of the page (#backup-report, #patch-report) as {label: value}."""
    rows = b.js(f"""Array.from(document.querySelectorAll('#{table} tbody tr'))
        .map(tr => Array.from(tr.children).map(td => td.textContent))""")
    return {r[0]: r[1] for r in rows if len(r) == 2}


def text(b: Browser, selector: str) -> str:
    return str(b.js(f"document.querySelector({selector!r}).textContent"))


def test_back_up_now_shows_progress_then_the_report(world):
    b: Browser = world["browser"]
    b.js("document.querySelector('nav button[data-tab=backups]').click()")
    b.wait("/No backup has finished/.test(document.querySelector('#backup-report').textContent)",
           timeout=30)
    b.wait("document.querySelector('#generations tbody tr td').textContent !== ''", timeout=30)
    before = text(b, "#generations tbody")
    b.js("document.getElementById('backup-now').click()")
    b.wait("document.getElementById('backup-state').textContent"
           ".startsWith('Backup started as steward-backup-')", timeout=30)
    # Progress while it runs: the archives written (bytes and files), then the post hook.
    b.wait("!document.getElementById('backup-progress').hidden && "
           "/finishing.*: [1-9][0-9.]* MiB of ~.*, [1-9][0-9]* of ~[1-9][0-9]* files so far/"
           ".test(document.getElementById('backup-numbers').textContent)", timeout=60)
    progress = text(b, "#backup-numbers")
    assert f"Backing up to {world['target']} since " in progress, progress
    assert b.js("document.getElementById('backup-now').disabled") is True
    b.wait("document.getElementById('backup-state').textContent === 'Backup finished.'",
           timeout=60)
    assert b.js("document.getElementById('backup-progress').hidden") is True
    report = cells(b, "backup-report")
    assert report["Result"] == "OK committed and verified", report
    gen = report["Generation"]
    assert gen not in before
    b.wait(f"document.querySelector('#generations tbody').textContent.includes({gen!r})")
    assert report["Verified"].startswith("yes") and report["Errors"] == "None."
    assert report["Where"] == f"{world['target']} from {os.path.realpath(world['tmp'] / 'src')}"
    assert "MiB read" in report["Size"] and report["Files that changed while read"] == "None."
    assert not b.js("document.getElementById('backup-now').disabled")
    # The unit the page started is the command the daemon would run, with its state and config.
    [log] = world["units"].glob("steward-backup-*.service.log")
    assert f"generation {gen} committed" in log.read_text()


def test_a_broken_last_report_is_said_on_the_tab(world):
    b: Browser = world["browser"]
    path: Path = world["state"] / "backup" / "last-report.json"
    good = path.read_text()
    try:
        path.write_text('{"kind": "fol')
        b.js("document.querySelector('nav button[data-tab=overview]').click()")
        b.js("document.querySelector('nav button[data-tab=backups]').click()")
        b.wait("/not JSON/.test(document.querySelector('#backup-report tbody').textContent)",
               timeout=30)
        assert str(path) in text(b, "#backup-report tbody")
    finally:
        path.write_text(good)
    b.js("document.querySelector('nav button[data-tab=overview]').click()")
    b.js("document.querySelector('nav button[data-tab=backups]').click()")
    b.wait("/committed and verified/.test(document.querySelector('#backup-report').textContent)",
           timeout=30)


@pytest.fixture(scope="module")
def patched(world: dict[str, Any]) -> dict[str, Any]:
    """A real patch run (dnf in an installroot, tests/patch/repo.py) that made health worse,
    its report in the daemon's state dir."""
    from tests.patch.applybed import write_conf
    from tests.patch.repo import build_repos, make_template, missing_tools

    why = missing_tools()
    if why:
        pytest.skip(why)
    tmp: Path = world["tmp"]
    bed = make_template(tmp / "dnfroot", build_repos())
    bed.enable("risky")  # cryptopol 1.1 sets the LEGACY crypto policy: the audit gets worse
    (tmp / "patchconf").mkdir()
    conf = write_conf(tmp / "patchconf")
    done = subprocess.run([sys.executable, "-m", "agent", "patch", "apply", "--all",
                           "--installroot", str(bed.root), "--config", str(conf),
                           "--state-dir", str(world["state"])], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    return {"stdout": done.stdout}


def test_the_patching_tab_shows_the_last_patch_report_with_health_before_and_after(
        world, patched):
    b: Browser = world["browser"]
    b.js("document.querySelector('nav button[data-tab=overview]').click()")
    b.js("document.querySelector('nav button[data-tab=patching]').click()")
    b.wait("/Health before/.test(document.querySelector('#patch-report').textContent)",
           timeout=30)
    report = cells(b, "patch-report")
    assert report["Result"].startswith("CRIT patch FAILED: health worse after patching"), report
    before, after = report["Health before"], report["Health after"]
    assert before.split()[0] in ("OK", "WARN", "CRIT", "UNKNOWN") and " checks in " in before
    assert before.split(" (")[0].split(" ", 1)[1] in patched["stdout"]  # "3 OK, 2 CRIT"
    assert after != before
    assert report["Checks that got worse"].startswith(
        "audit:system.crypto_policy: OK → WARN: System crypto policy is not LEGACY"), report
    assert "cryptopol.noarch: 1.0-1 → 1.1-1" in report["Packages changed"]


def _screens(b: Browser, lang: str, shots: Path) -> None:
    shots.mkdir(parents=True, exist_ok=True)
    for tab in TABS:
        b.js(f"document.querySelector('nav button[data-tab={tab}]').click()")
        # Each tab says what it found or why not, never stays blank: every table has a row,
        # every paragraph some text, no note still says "…ing…".
        b.wait(f"""(() => {{ const s = document.getElementById('{tab}');
            const busy = Array.from(s.querySelectorAll('.note'))
                .some(n => /…$/.test(n.textContent));
            const tables = Array.from(s.querySelectorAll('tbody')).every(t => t.children.length);
            const texts = Array.from(s.querySelectorAll(':scope > p')).every(p => p.textContent);
            return !busy && tables && texts }})()""", timeout=120)
        time.sleep(0.3)
        b.screenshot(shots / f"{lang}-{tab}.png")
    b.js("document.querySelector('nav button[data-tab=overview]').click()")


def test_every_tab_in_english_then_japanese_with_cockpitlang_ja(world):
    b: Browser = world["browser"]
    _screens(b, "en", world["shots"])
    gens = b.js("document.querySelector('#generations tbody').textContent")
    assert "verified" in gens and "not verified" not in gens, gens
    assert b.js("document.getElementById('usb').textContent")
    assert "Hardening score" in b.js("document.getElementById('score').textContent")
    b.open(world["ws"].url, cookies={"CockpitLang": "ja"})
    b.wait("document.querySelector('nav button[data-tab=overview]').textContent === '概要'")
    assert b.js("cockpit.language") == "ja"
    b.wait("document.querySelector('#checks tbody tr[data-check]')", timeout=10)
    # Japanese for the page's words; steward's own values stay as steward wrote them.
    assert b.js("document.querySelector('#checks thead').textContent").count("対処") == 1
    assert "メンテナンス" in b.js("document.getElementById('maint-state').textContent")
    _screens(b, "ja", world["shots"])
    for tab in TABS:
        assert (world["shots"] / f"ja-{tab}.png").stat().st_size > 10_000


def test_values_are_text_never_html(world):
    b: Browser = world["browser"]
    b.open(world["ws"].url)
    b.wait("document.querySelector('#checks tbody tr[data-check]')")
    b.js("fillTable('checks', [['<b id=\"inj\">x</b>', 'a', 'b', 'c', 'd']], '')")
    assert b.js("document.getElementById('inj')") is None
    assert "<b id" in b.js("document.querySelector('#checks tbody td').textContent")


def test_a_stopped_daemon_is_said_so(world):
    b: Browser = world["browser"]
    world["daemon"].terminate()
    world["daemon"].wait(10)
    b.wait("document.getElementById('banner').textContent.includes('not running')", timeout=8)
    assert not b.js("document.getElementById('banner').hidden")


@pytest.mark.parametrize("script, words", [
    (None, "steward is not installed"),
    ("#!/bin/sh\necho 'Traceback (most recent call last):'\nexit 0\n", "not JSON"),
])
def test_missing_or_broken_steward_gives_a_clear_message(tmp_path, script, words):
    if script is None:
        path = "/usr/bin:/bin"  # no steward on it
    else:
        path = f"{bin_dir(tmp_path, script)}:/usr/bin:/bin"
    ws = Cockpit(tmp_path, path, tmp_path / "state")
    b = Browser(tmp_path / "profile")
    try:
        b.open(ws.url)
        b.wait(f"document.getElementById('banner').textContent.includes({words!r})")
        assert words in b.js("document.querySelector('#checks tbody').textContent")
    finally:
        b.close()
        ws.stop()
