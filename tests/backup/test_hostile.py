"""A drive is untrusted input: generations rewritten by whoever can write it (checksums
recomputed, so ``backup verify`` passes) must not make ``restore-file`` write outside --to,
and a damaged index is a clear error, not a traceback."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest

from tests.backup.conftest import backup, generations, root_loop
from tests.backup.hostile import forge, tar_of, tree

pytestmark = root_loop


def _generation(tmp_path: Path, target: Path, name: str = "src") -> Path:
    src = tmp_path / name
    (src / "etc").mkdir(parents=True)
    (src / "etc/ok").write_text("fine\n")
    (src / "etc/other").write_text("also fine\n")
    r = backup("create", "--source", str(src), "--target", str(target))
    assert r.returncode == 0, r.stderr
    return target / str(generations(target)[-1]["id"])


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder whose sentinel/ a hostile generation aims at; --to is its to/."""
    out = tmp_path / "out"
    (out / "sentinel").mkdir(parents=True)
    (out / "sentinel/victim").write_text("untouched\n")
    os.chmod(out / "sentinel", 0o755)
    (out / "to").mkdir()
    return out


def _hostile_segments(tmp_path: Path, sentinel: Path) -> list[tuple[str, bytes]]:
    a = tmp_path / "scratch-a"  # symlinks out: one absolute, one relative
    (a / "etc").mkdir(parents=True)
    os.symlink(sentinel, a / "etc/evil")
    os.symlink("../../sentinel", a / "etc/up")
    b = tmp_path / "scratch-b"  # what goes through them, a device node, a good file
    for d in ("etc/evil", "etc/up", "etc/s2dir", "dev"):
        (b / d).mkdir(parents=True)
    (b / "etc/evil/pwned").write_text("pwned\n")
    (b / "etc/up/pwned2").write_text("pwned\n")
    (b / "etc/evil/victim").write_text("linked\n")
    os.link(b / "etc/evil/victim", b / "etc/hl")
    os.mknod(b / "dev/sda", 0o600 | 0o060000, os.makedev(8, 0))
    (b / "etc/ok").write_text("restored\n")
    os.symlink(sentinel, b / "etc/s2link")
    (b / "etc/s2dir/pwned3").write_text("pwned\n")
    c = tmp_path / "scratch-c"  # names that climb out or are absolute, a hard link out
    for d in ("up", "abs", "x"):
        (c / d).mkdir(parents=True)
    (c / "up/escape").write_text("escaped\n")
    (c / "abs/f").write_text("absolute\n")
    (c / "x/victim").write_text("x\n")
    os.link(c / "x/victim", c / "hl2")
    d = tmp_path / "scratch-d"  # directories: one over the symlink, wide open
    (d / "etc/evil").mkdir(parents=True)
    (d / "dev").mkdir()
    os.chmod(d / "etc/evil", 0o777)
    return [
        ("data", tar_of(a, ["etc/evil", "etc/up"])),
        ("data", tar_of(b, ["etc/evil/pwned", "etc/up/pwned2", "etc/evil/victim", "etc/hl",
                            "dev/sda", "etc/ok", "etc/s2link", "etc/s2dir/pwned3"],
                        r"s|^etc/s2link$|etc/s2|;s|^etc/s2dir/|etc/s2/|")),
        ("data", tar_of(c, ["up/escape", "abs/f", "x/victim", "hl2"],
                        rf"s|^up/|../|;s|^abs/|{sentinel}/|;s|^x/|../sentinel/|")),
        ("dirs", tar_of(d, [".", "etc", "etc/evil", "dev"])),
    ]


def test_hostile_generation_writes_nothing_outside_to(tmp_path: Path, target: Path,
                                                      outside: Path) -> None:
    gen = _generation(tmp_path, target)
    sentinel = outside / "sentinel"
    forge(gen, _hostile_segments(tmp_path, sentinel))
    assert backup("verify", gen.name, "--target", str(target)).returncode == 0
    before = tree(outside)
    to = outside / "to"
    r = backup("restore-file", gen.name, "/", "--to", str(to), "--target", str(target))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    after = tree(outside)
    assert {k: v for k, v in after.items() if k != "to" and not k.startswith("to/")} == \
        {k: v for k, v in before.items() if k != "to" and not k.startswith("to/")}
    refused = [line for line in r.stderr.splitlines() if line.startswith("steward: refused")]
    expect = {"/etc/evil/pwned": "/etc/evil is a symlink in this generation",
              "/etc/up/pwned2": "/etc/up is a symlink in this generation",
              "/etc/evil/victim": "/etc/evil is a symlink in this generation",
              "/etc/hl": "/etc/evil is a symlink in this generation",
              "/etc/s2/pwned3": "/etc/s2 is a symlink in this generation",
              "/../escape": "'..' in the name",
              f"{sentinel}/f": "an absolute name",
              "/../sentinel/victim": "'..' in the name",
              "/hl2": "a hard link to ../sentinel/victim: '..' in the name"}
    for name, why in expect.items():
        assert any(line.startswith(f"steward: refused {name} (segments/") and
                   line.endswith(why) for line in refused), "\n".join(refused)
    assert len(refused) == len(expect), r.stderr
    assert "9 members refused" in r.stderr
    assert "skipped device node /dev/sda" in r.stdout
    assert not (to / "dev/sda").exists() and (to / "dev").is_dir()
    # What is harmless is restored: the good file, the symlinks (as symlinks, inside --to).
    assert (to / "etc/ok").read_text() == "restored\n"
    assert os.readlink(to / "etc/up") == "../../sentinel"
    assert os.readlink(to / "etc/s2") == str(sentinel)


def test_two_restores_into_one_folder_do_not_follow_the_first_ones_symlink(
        tmp_path: Path, target: Path, outside: Path) -> None:
    sentinel = outside / "sentinel"
    link = tmp_path / "scratch-link"
    (link / "etc").mkdir(parents=True)
    os.symlink(sentinel, link / "etc/evil")
    first = _generation(tmp_path, target, "src1")
    forge(first, [("data", tar_of(link, ["etc/evil"]))])
    file = tmp_path / "scratch-file"
    (file / "etc/evil").mkdir(parents=True)
    (file / "etc/evil/pwned").write_text("pwned\n")
    (file / "etc/ok").write_text("second\n")
    second = _generation(tmp_path, target, "src2")
    forge(second, [("data", tar_of(file, ["etc/evil/pwned", "etc/ok"]))])
    before = tree(sentinel)
    to = outside / "to"
    r = backup("restore-file", first.name, "/", "--to", str(to), "--target", str(target))
    assert r.returncode == 0, r.stderr  # a symlink out of --to is data like any other
    assert os.readlink(to / "etc/evil") == str(sentinel)
    r = backup("restore-file", second.name, "/", "--to", str(to), "--target", str(target))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "steward: refused /etc/evil/pwned (segments/0000): /etc/evil is a symlink in the " \
        "destination" in r.stderr
    assert tree(sentinel) == before
    assert (to / "etc/ok").read_text() == "second\n"


def test_a_partial_restore_through_a_symlink_is_refused_too(tmp_path: Path, target: Path,
                                                           outside: Path) -> None:
    gen = _generation(tmp_path, target)
    forge(gen, _hostile_segments(tmp_path, outside / "sentinel"))
    before = tree(outside / "sentinel")
    to = outside / "to"
    r = backup("restore-file", gen.name, "/etc", "--to", str(to), "--target", str(target))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "steward: refused /etc/evil/pwned" in r.stderr
    assert "escape" not in r.stderr  # not asked for: not judged, not extracted
    assert tree(outside / "sentinel") == before
    assert (to / "etc/ok").read_text() == "restored\n"


def _deflate_stream(chunks: int) -> bytes:
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    out = [z.compress(b"[" + b" " * (2**20 - 1))]
    out += [z.compress(b" " * 2**20) for _ in range(chunks)]
    return b"".join([*out, z.compress(b"]"), z.flush()])


@pytest.mark.parametrize("damage,why", [
    (lambda p: p.write_bytes(b"this is not gzip at all"), "Not a gzipped file"),
    (lambda p: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]), "index damaged"),
    (lambda p: p.write_bytes(gzip.compress(b'[["/etc/\xff", "f", 1, 0, 0, 0, 0, ""]]')),
     "not JSON in UTF-8"),
    (lambda p: p.write_bytes(gzip.compress(b'[["/etc/ok", "f"]]')), "row 1 is not"),
    (lambda p: p.write_bytes(gzip.compress(b"[" * 100_000)), "not JSON"),
    (lambda p: p.write_bytes(_deflate_stream(257)), "over 256 MiB decompressed"),
], ids=["not-gzip", "truncated", "not-utf8", "short-row", "nested", "oversize"])
def test_a_damaged_index_is_a_clear_error_and_nothing_is_restored(
        tmp_path: Path, target: Path, damage: object, why: str) -> None:
    gen = _generation(tmp_path, target)
    for idx in sorted((gen / "segments").glob("*.idx.gz")):
        damage(idx)  # type: ignore[operator]
    to = tmp_path / "to"
    r = backup("restore-file", gen.name, "/etc/ok", "--to", str(to), "--target", str(target))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr) < 1000, r.stderr
    assert "segments/0000.idx.gz: index damaged" in r.stderr and why in r.stderr, r.stderr
    assert f"run `steward backup verify {gen.name}`; nothing was restored" in r.stderr
    assert not to.exists()
    shutil.rmtree(gen)


def test_a_segment_not_in_stewards_format_is_refused_from_that_header_on(
        tmp_path: Path, target: Path, outside: Path) -> None:
    gen = _generation(tmp_path, target)
    scratch = tmp_path / "scratch"
    (scratch / "etc").mkdir(parents=True)
    (scratch / "etc/first").write_text("posix\n")
    (scratch / "etc/second").write_text("gnu\n")
    posix = tar_of(scratch, ["etc/first"])
    gnu = subprocess.run(["tar", "--create", "--file=-", "--format=gnu", "-C", str(scratch),
                          "etc/second"], capture_output=True, timeout=60, check=True).stdout
    bad = bytearray(tar_of(scratch, ["etc/first"]))
    bad[1024 + 100] ^= 0x01  # the member's header, after its extended header: checksum off
    forge(gen, [("data", posix[:2048] + gnu),  # one posix member, then GNU headers
                ("data", bytes(bad))])
    to = outside / "to"
    r = backup("restore-file", gen.name, "/", "--to", str(to), "--target", str(target))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "refused the rest of segments/0000.tar.zst: tar header at byte 2048 is not in the " \
        "posix format steward writes" in r.stderr, r.stderr
    assert "refused the rest of segments/0001.tar.zst: tar header at byte 1024 fails its " \
        "checksum" in r.stderr, r.stderr
    assert (to / "etc/first").read_text() == "posix\n" and not (to / "etc/second").exists()


@pytest.mark.parametrize(("damage", "why"), [
    (b"[" * 100_000, "nested too deep"),
    (b'{"format": 1, "pad": "' + b"x" * (17 << 20) + b'"}', "larger than 16777216 bytes"),
    (b"\xff\xfe", "not UTF-8 text"),
    (b"fifo", "not a regular file"),
], ids=["nested", "oversize", "not-utf8", "fifo"])
def test_a_hostile_manifest_is_a_clear_error(tmp_path: Path, target: Path, damage: bytes,
                                             why: str) -> None:
    gen = _generation(tmp_path, target)
    (gen / "manifest.json").unlink()
    if damage == b"fifo":  # opening it for reading would wait for a writer forever
        os.mkfifo(gen / "manifest.json")
    else:
        (gen / "manifest.json").write_bytes(damage)
    r = backup("restore-file", gen.name, "/etc/ok", "--to", str(tmp_path / "to"), "--target",
               str(target))
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert f"generation {gen.name}: manifest.json unreadable: {why}" in r.stderr, r.stderr
    assert not (tmp_path / "to").exists()
    shutil.rmtree(gen)
