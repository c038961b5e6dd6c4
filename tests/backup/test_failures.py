"""A backup that cannot finish never replaces the last good one: kill -9, a full target, a
failing device; damage is found and named; bad input is refused clearly."""

from __future__ import annotations

import fcntl
import functools
import io
import mmap
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backup import create, writer
from backup.archive import KEEPS_NOT
from backup.options import BackupOptions
from tests.backup.conftest import backup, generations, root_loop, write_config
from tests.conftest import REPO
from tests.fstree import loop_fs


def _files(root: Path, count: int, size: int, random: bool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        (root / f"f{n:03d}").write_bytes(os.urandom(size) if random else b"steward " * (size // 8))


def _wait_for(cond: object, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def _partial_bytes(target: Path) -> int:
    return sum(f.stat().st_size for p in target.glob(".partial-*")
               for f in (p / "segments").glob("*.tar.zst") if f.exists())


@pytest.fixture
def slow_config(tmp_path: Path) -> Path:
    # zstd -19 on random data: slow enough to interrupt reliably, one archive at a time.
    return write_config(tmp_path / "slow.toml", "[backup]\ncompression_level = 19\njobs = 1\n")


def test_kill_9_keeps_the_last_good_generation(tmp_path: Path, target: Path,
                                                slow_config: Path) -> None:
    src = tmp_path / "src"
    _files(src, 4, 2**20, random=True)
    assert backup("create", "--source", str(src), "--target", str(target)).returncode == 0
    [good] = generations(target)
    _files(src, 12, 8 * 2**20, random=True)
    p = subprocess.Popen([sys.executable, "-m", "agent", "backup", "create", "--source",
                          str(src), "--target", str(target), "--config", str(slow_config)],
                         cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _partial_bytes(target) > 0)
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # steward, tar and zstd: a power cut, as it were
        p.wait()
    assert list(target.glob(".partial-*"))
    assert generations(target) == [good]
    assert backup("verify", "--target", str(target)).returncode == 0
    r = backup("create", "--source", str(src), "--target", str(target))
    assert r.returncode == 0, r.stderr
    assert "interrupted backup" in r.stdout
    assert not list(target.glob(".partial-*"))
    assert generations(target)[0]["id"] == good["id"]


pytestmark = root_loop


def test_full_target_is_a_failure_and_commits_nothing(tmp_path: Path,
                                                      small_target: Path) -> None:
    src = tmp_path / "src"
    _files(src, 12, 4 * 2**20, random=False)  # compresses ~1000:1
    r = backup("create", "--source", str(src), "--target", str(small_target))
    assert r.returncode == 0, r.stderr
    [good] = generations(small_target)
    # Now 120 MiB of incompressible data: the estimate from the last ratio passes, the disk
    # fills up.
    _files(src, 30, 4 * 2**20, random=True)
    r = backup("create", "--source", str(src), "--target", str(small_target))
    assert r.returncode == 1
    assert "backup target is full" in r.stderr and "nothing committed" in r.stderr
    assert "Traceback" not in r.stderr
    assert generations(small_target) == [good]
    assert not list(small_target.glob(".partial-*"))  # its space is given back
    assert backup("verify", "--target", str(small_target)).returncode == 0


def test_too_little_free_space_is_refused_once_the_walk_has_sized_it(
        tmp_path: Path, small_target: Path) -> None:
    src = tmp_path / "src"
    _files(src, 15, 10 * 2**20, random=True)
    r = backup("create", "--source", str(src), "--target", str(small_target))
    assert r.returncode == 1 and "free; this backup needs about" in r.stderr
    assert generations(small_target) == [] and not list(small_target.glob(".partial-*"))


def test_failing_device_is_a_failure(tmp_path: Path, slow_config: Path) -> None:
    with loop_fs("ext4", 256, tmp_path, options="errors=remount-ro") as tgt:
        src = tmp_path / "src"
        _files(src, 8, 8 * 2**20, random=True)
        dev = os.path.basename(os.path.realpath(
            subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(tgt)], capture_output=True,
                           text=True, check=True, timeout=30).stdout.strip()))
        trigger = Path(f"/sys/fs/ext4/{dev}/trigger_fs_error")
        if not trigger.exists():
            pytest.skip("kernel without ext4 trigger_fs_error")
        p = subprocess.Popen([sys.executable, "-m", "agent", "backup", "create", "--source",
                              str(src), "--target", str(tgt), "--config", str(slow_config)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        _wait_for(lambda: _partial_bytes(tgt) > 0)
        trigger.write_text("steward test: the drive fails\n")  # the filesystem turns read-only
        _, err = p.communicate(timeout=300)
        assert p.returncode == 1, err
        assert "nothing committed" in err and "read-only" in err, err
        assert not [g for g in tgt.iterdir() if g.name[0].isdigit()]


def _behind_the_filesystem(image: Path, archive: Path) -> None:
    """Flip a byte of ``archive`` in the loop device's backing file, as a drive that does not
    keep what it is given would: the filesystem's page cache still holds the bytes written."""
    with open(archive, "rb") as fh:
        probe = fh.read(4096)  # zstd of random data: its first block is found once
    with open(image, "r+b") as fh, mmap.mmap(fh.fileno(), 0) as disk:
        at = disk.find(probe)
        assert at >= 0 and disk.find(probe, at + 1) < 0
        disk[at + 2000] ^= 0x01
        disk.flush()


@pytest.mark.parametrize(("in_memory", "lies"), [(True, True), (False, True), (False, False)],
                         ids=["compared-with-memory", "evicted-zstd-checks", "evicted-intact"])
def test_a_drive_that_does_not_keep_what_it_is_given_is_a_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_memory: bool, lies: bool) -> None:
    """The read-back is compared with the bytes written while they are in memory; once they
    are not, zstd checks the device's bytes against its content checksums."""
    src = tmp_path / "src"
    _files(src, 3, 2**20, random=True)
    read_back = writer.read_back

    def between_fsync_and_read_back(path: str, fd: int) -> tuple[str, int]:
        os.fsync(fd)
        if lies:
            _behind_the_filesystem(image, Path(path))
        if not in_memory:  # after the flip: finding the archive's bytes read some of them
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return read_back(path, fd)

    monkeypatch.setattr(writer, "read_back", between_fsync_and_read_back)
    with loop_fs("ext4", 64, tmp_path) as tgt:
        image = tmp_path / "ext4-0.img"
        run = functools.partial(create.create, str(src), tgt, BackupOptions(),
                                stream=io.StringIO(), say=lambda _: None)
        if not lies:
            out = run()
            assert backup("verify", "--target", str(tgt)).returncode == 0
            assert out.manifest["totals"]["written"] > 0
            return
        with pytest.raises(create.BackupError) as failed:
            run()
        assert KEEPS_NOT in str(failed.value)
        assert ("differ from those written" in str(failed.value)) is in_memory
        assert ("zstd -t" in str(failed.value)) is not in_memory
        assert not [g for g in tgt.iterdir() if g.name[0].isdigit() or
                    g.name.startswith(".partial")]


def test_one_corrupted_byte_is_found_and_named(tmp_path: Path, target: Path) -> None:
    src = tmp_path / "src"
    _files(src / "etc", 20, 50_000, random=True)
    assert backup("create", "--source", str(src), "--target", str(target)).returncode == 0
    gen = target / str(generations(target)[0]["id"])
    seg = gen / "segments" / "0000.tar.zst"
    with open(seg, "r+b") as fh:
        fh.seek(seg.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x01]))
    r = backup("verify", "--target", str(target))
    assert r.returncode == 1
    assert "segments/0000.tar.zst: damaged" in r.stdout and "/etc/f000" in r.stdout
    assert generations(target)[0]["verified"] is False
    # Nothing is extracted from a damaged archive.
    out = tmp_path / "out"
    r = backup("restore-file", "latest", "/etc/f001", "--to", str(out), "--target", str(target))
    assert r.returncode == 1 and "damaged" in r.stderr
    assert not (out / "etc").exists()


def test_a_second_backup_on_the_same_target_is_refused(tmp_path: Path, target: Path) -> None:
    src = tmp_path / "src"
    _files(src, 2, 1000, random=True)
    with open(target / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write("4242\n")
        fh.flush()
        r = backup("create", "--source", str(src), "--target", str(target))
    assert r.returncode == 1 and "another backup (pid 4242)" in r.stderr


def test_hooks_run_around_the_backup_and_a_failing_pre_hook_stops_it(tmp_path: Path,
                                                                     target: Path) -> None:
    src = tmp_path / "src"
    _files(src, 2, 1000, random=True)
    log = tmp_path / "hooks.log"
    sh = "/bin/sh"
    cfg = write_config(tmp_path / "hooks.toml", f"""[backup]
pre_hooks = [["{sh}", "-c", "echo pre >> {log}"]]
post_hooks = [["{sh}", "-c", "echo post >> {log}"]]
""")
    r = backup("create", "--source", str(src), "--target", str(target), config=cfg)
    assert r.returncode == 0, r.stderr
    assert log.read_text() == "pre\npost\n"
    bad = write_config(tmp_path / "bad.toml", f"""[backup]
pre_hooks = [["{sh}", "-c", "echo failing pre >&2; exit 3"]]
post_hooks = [["{sh}", "-c", "echo post >> {log}"]]
""")
    r = backup("create", "--source", str(src), "--target", str(target), config=bad)
    assert r.returncode == 1
    assert "exited 3: failing pre" in r.stderr and "not started" in r.stderr
    assert log.read_text() == "pre\npost\npost\n"  # post hooks run after a failure too
    assert len(generations(target)) == 1


@pytest.mark.parametrize("args,config,message", [
    (["create", "--source", "/nonexistent", "--target", "{target}"], "",
     "--source /nonexistent: not a directory"),
    (["create"], "", "no backup target: pass --target DIR or set [backup] target"),
    (["list"], "[backup]\ntarget = \"/nonexistent\"\n", "backup target /nonexistent"),
    (["list"], "[backup]\nkeep = 0\n", "backup.keep = 0: out of range"),
    (["list"], "[backup]\npre_hooks = [[\"postsuper\", \"-h\", \"ALL\"]]\n",
     "not an absolute path"),
    (["verify", "20990101T000000Z", "--target", "{target}"], "", "no backup generations"),
    # backup loads only the check plugins the file names, and still validates their tables
    (["list", "--target", "{target}"], "[checks.disk]\nbogus = 1\n",
     "checks.disk.bogus: unknown key (accepted: enabled,"),
    (["list", "--target", "{target}"], "[checks.nosuch]\nx = 1\n",
     "checks.nosuch: unknown check (accepted: audit, certrenew, disk,"),
])
def test_bad_input_is_a_clear_error(tmp_path: Path, target: Path, args: list[str], config: str,
                                    message: str) -> None:
    cfg = write_config(tmp_path / "c.toml", config)
    r = backup(*(a.format(target=target) for a in args), config=cfg)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
