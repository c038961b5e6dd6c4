"""What the Cockpit page's Backups tab reads: the report every ``steward backup create`` leaves
in the state dir, the progress file while one runs, ``steward backup last`` and ``steward
backup start``, from the real commands and against their schemas. (The patch report is in
tests/patch/test_apply.py, beside the patch runs that make it; ``usb list`` in tests/usb.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import REPO, run_steward
from tests.schemas import validate
from tests.systemdstandin import install


def tree(tmp: Path) -> tuple[Path, Path]:
    src, target = tmp / "src", tmp / "target"
    (src / "etc").mkdir(parents=True)
    target.mkdir()
    (src / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (src / "etc" / "big").write_bytes(os.urandom(1 << 20))
    return src, target


def conf(tmp: Path, text: str) -> Path:
    path = tmp / "steward.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def last(state: Path, *extra: str) -> dict[str, Any]:
    r = run_steward("backup", "last", "--format", "json", "--state-dir", str(state), *extra)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    validate(doc, "backup-last.schema.json")
    return dict(doc)


def test_a_backup_leaves_its_report_for_backup_last(tmp_path):
    src, target = tree(tmp_path)
    state = tmp_path / "state"
    assert last(state)["report"] is None
    none = run_steward("backup", "last", "--state-dir", str(state))
    assert none.returncode == 0 and "no backup has finished on this machine yet" in none.stdout
    made = run_steward("backup", "create", "--source", str(src), "--target", str(target),
                       "--state-dir", str(state), timeout=120)
    assert made.returncode == 0, made.stderr
    rep = last(state)["report"]
    [gen] = json.loads(run_steward("backup", "list", "--format", "json", "--target",
                                   str(target)).stdout)["generations"]
    assert rep["ok"] is True and rep["kind"] == "folder" and rep["errors"] == []
    assert rep["generation"] == gen["id"] and rep["stored"] == gen["bytes"]
    assert rep["verified"] is True and rep["bytes"] >= 1 << 20 and rep["entries"] >= 4
    assert rep["target"] == str(target) and rep["source"] == os.path.realpath(src)
    assert rep["started"] <= rep["finished"] and rep["duration_s"] >= 0
    assert rep["text"].startswith(f"generation {gen['id']} committed in {target}")
    assert not (state / "backup" / "progress.json").exists()
    assert (state / "backup" / "last-report.json").stat().st_mode & 0o777 == 0o600
    text = run_steward("backup", "last", "--state-dir", str(state)).stdout
    assert "last backup (folder, " in text and ": OK" in text and gen["id"] in text


def test_a_failed_backup_is_reported_with_why(tmp_path):
    src, target = tree(tmp_path)
    state = tmp_path / "state"
    cfg = conf(tmp_path, '[backup]\npre_hooks = [["/bin/false"]]\n')
    made = run_steward("backup", "create", "--source", str(src), "--target", str(target),
                       "--config", str(cfg), "--state-dir", str(state), timeout=120)
    assert made.returncode == 1
    rep = last(state)["report"]
    assert rep["ok"] is False and rep["generation"] is None and rep["stored"] is None
    assert rep["verified"] is False and rep["exit_code"] == 1
    [error] = rep["errors"]
    assert "pre hook /bin/false exited 1" in error and "nothing committed" in error


def test_a_running_backup_shows_its_progress_then_its_report(tmp_path):
    src, target = tree(tmp_path)
    state = tmp_path / "state"
    # The post hook keeps the backup running (archives written) long enough to be seen.
    cfg = conf(tmp_path, '[backup]\npost_hooks = [["/bin/sleep", "4"]]\n')
    proc = subprocess.Popen([sys.executable, "-m", "agent", "backup", "create", "--source",
                             str(src), "--target", str(target), "--config", str(cfg),
                             "--state-dir", str(state)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            prog = last(state)["progress"]
            if prog is not None:
                seen.append(prog)
                if prog["phase"] == "finishing":
                    break
            time.sleep(0.2)
        assert seen, "no progress while the backup ran"
        prog = seen[-1]
        assert prog["pid"] == proc.pid and prog["kind"] == "folder"
        assert prog["phase"] == "finishing" and prog["bytes"] >= 1 << 20
        assert prog["files"] == prog["total_files"] >= 2 and prog["target"] == str(target)
        assert last(state)["report"] is None  # not before the backup has ended
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    doc = last(state)
    assert doc["progress"] is None and doc["report"]["ok"] is True


def test_a_bad_report_file_is_exit_2_naming_it_and_a_stale_progress_file_is_no_progress(
        tmp_path):
    state = tmp_path / "state"
    (state / "backup").mkdir(parents=True)
    report = state / "backup" / "last-report.json"
    for body, words in (("{", "not JSON"), ("[1]\n", "not a backup report")):
        report.write_text(body)
        r = run_steward("backup", "last", "--format", "json", "--state-dir", str(state))
        assert r.returncode == 2 and r.stdout == ""
        assert str(report) in r.stderr and words in r.stderr and "Traceback" not in r.stderr
    report.unlink()
    dead = subprocess.Popen(["true"])  # a pid that is no longer running
    dead.wait()
    (state / "backup" / "progress.json").write_text(json.dumps({"pid": dead.pid}))
    assert last(state)["progress"] is None


def test_backup_start_runs_create_as_a_unit_and_is_refused_while_one_runs(tmp_path):
    src, target = tree(tmp_path)
    state = tmp_path / "state"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    units = install(bindir, tmp_path / "units")
    cfg = conf(tmp_path, f'[backup]\ntarget = "{target}"\nsource = "{src}"\n'
               'post_hooks = [["/bin/sleep", "3"]]\n')
    env = {"PATH": f"{bindir}:{os.environ['PATH']}"}
    args = ("--config", str(cfg), "--state-dir", str(state), "--format", "json")
    r = run_steward("backup", "start", *args, env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    validate(doc, "backup-start.schema.json")
    assert doc["started"] and doc["unit"].startswith("steward-backup-")
    unit = doc["unit"]
    busy = run_steward("backup", "start", *args, env=env)
    assert busy.returncode == 1, busy.stderr
    refused = json.loads(busy.stdout)
    validate(refused, "backup-start.schema.json")
    assert refused["started"] is False and refused["busy"] == [unit]
    deadline = time.monotonic() + 60
    while last(state)["report"] is None and time.monotonic() < deadline:
        time.sleep(0.3)
    log = (units / f"{unit}.log").read_text()
    rep = last(state)["report"]
    # The unit ran steward backup create with this state dir and config: [backup] source
    # into [backup] target, and its report is where steward backup last reads it.
    assert rep is not None and rep["ok"], log
    assert rep["target"] == str(target) and rep["source"] == os.path.realpath(src), log
    assert f"generation {rep['generation']} committed in {target}" in log
    wrong = run_steward("backup", "start", "--device", "/dev/sdz", *args, env=env)
    assert wrong.returncode == 2 and "--device picks the drive for --usb" in wrong.stderr
