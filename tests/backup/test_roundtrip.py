"""Backup -> wipe -> restore on real ext4 and xfs, every attribute compared; reuse of unchanged
archives; single-file restore."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.backup.conftest import backup, generations, root_loop
from tests.fstree import build_tree, diff, have_mkfs, loop_fs, remake, snapshot

pytestmark = root_loop


@pytest.mark.parametrize("fstype,size", [("ext4", 400), ("xfs", 400)])
def test_backup_wipe_restore_is_identical(tmp_path: Path, target: Path, fstype: str,
                                          size: int) -> None:
    if not have_mkfs(fstype):
        pytest.skip(f"mkfs.{fstype} missing")
    with loop_fs(fstype, size, tmp_path) as src:
        build_tree(src)  # with a 2 GiB sparse file
        before = snapshot(src)
        r = backup("create", "--source", str(src), "--target", str(target))
        assert r.returncode == 0, r.stderr
        assert "committed" in r.stdout
        [gen] = generations(target)
        assert gen["verified"] is True
        # The sparse 2 GiB file must not have been stored as 2 GiB of zeros.
        assert isinstance(gen["bytes"], int) and gen["bytes"] < 50 * 2**20
        remake(src)
        assert snapshot(src) != before
        r = backup("restore-file", str(gen["id"]), "/", "--to", str(src), "--target",
                   str(target), "--devices")  # a whole tree back: its device nodes too
        assert r.returncode == 0, r.stderr
        after = snapshot(src)
        assert diff(before, after) == []
        # Sanity of the comparison itself: the tree had every kind of hard case in it.
        kinds = {e["type"] for e in before.values()}
        assert {"file", "dir", "symlink", "chr", "blk", "fifo"} <= kinds, kinds
        assert any("security.capability" in e["xattrs"] for e in before.values())
        assert any("system.posix_acl_default" in e["xattrs"] for e in before.values())
        assert any(e.get("sparse") for e in before.values())


def _tree(root: Path) -> None:
    for d in range(80):
        sub = root / f"d{d:02d}"
        sub.mkdir()
        for f in range(40):
            (sub / f"f{f:03d}").write_bytes(os.urandom(30_000))
    big = root / "big"
    big.mkdir()
    for n in range(3):
        (big / f"blob{n}").write_bytes(os.urandom(40 * 2**20))


def p_is_gen(p: Path) -> bool:
    return p.is_dir() and p.name[0].isdigit()


def _next(src: Path, target: Path) -> dict[str, Any]:
    r = backup("create", "--source", str(src), "--target", str(target))
    assert r.returncode == 0, r.stderr
    manifest: dict[str, Any] = json.loads(
        (target / str(generations(target)[-1]["id"]) / "manifest.json").read_text())
    return manifest


def test_unchanged_rebackup_reuses_and_generations_stand_alone(tmp_path: Path,
                                                                target: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    assert backup("create", "--source", str(src), "--target", str(target)).returncode == 0
    r = backup("create", "--source", str(src), "--target", str(target))
    assert r.returncode == 0, r.stderr
    g1, g2 = (target / str(g["id"]) for g in generations(target))
    m2 = json.loads((g2 / "manifest.json").read_text())
    assert m2["totals"]["written"] == 0
    assert m2["totals"]["reused_segments"] == len(m2["segments"]) > 3
    # One changed file: only its segment is written again; a new file: its segment and the
    # directories' (its folder's time changed).
    (src / "d07" / "f003").write_bytes(os.urandom(30_000))
    m3 = _next(src, target)
    fresh = [s for s in m3["segments"] if not s["reused"]]
    assert [s["kind"] for s in fresh] == ["data"], fresh
    assert fresh[0]["entries"] < 3200 and m3["totals"]["written"] < 40 * 2**20
    (src / "d12" / "new").write_bytes(b"new\n")
    m3 = _next(src, target)
    fresh = [s for s in m3["segments"] if not s["reused"]]
    assert sorted(s["kind"] for s in fresh) in (["data", "dirs"], ["data", "data", "dirs"])
    g3 = target / m3["id"]
    # Reused archives are hard links: deleting the older generations leaves g3 whole.
    some = g3 / "segments" / f"{m3['segments'][0]['name']}.tar.zst"
    assert os.stat(some).st_nlink >= 2
    for g in (g1, g2, *(p for p in target.iterdir() if p.name < g3.name and p != g1)):
        if p_is_gen(g):
            shutil.rmtree(g)
    assert backup("verify", "--target", str(target)).returncode == 0
    out = tmp_path / "out"
    r = backup("restore-file", g3.name, "/", "--to", str(out), "--target", str(target))
    assert r.returncode == 0, r.stderr
    assert diff(snapshot(src), snapshot(out)) == []


def test_restore_file_brings_back_one_file_with_its_metadata(tmp_path: Path,
                                                              target: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    build_tree(src, sparse_size=2**30)
    before = snapshot(src)
    assert backup("create", "--source", str(src), "--target", str(target)).returncode == 0
    caps = [p for p, e in before.items() if "security.capability" in e["xattrs"]
            and e["type"] == "file"]
    acl = [p for p, e in before.items() if "system.posix_acl_access" in e["xattrs"]
           and e["type"] == "file" and "links" not in e]
    wanted = [caps[0], acl[0]]
    out = tmp_path / "out"
    r = backup("restore-file", "latest", *(os.fsdecode(p) for p in wanted), "--to", str(out),
               "--target", str(target))
    assert r.returncode == 0, r.stderr
    got = snapshot(out)
    files = {p for p, e in got.items() if e["type"] != "dir"}
    assert files == set(wanted) | {p for w in wanted for p in before[w].get("links", ())}
    for p in files:
        assert {k: v for k, v in got[p].items() if k not in ("links", "nlink")} == \
            {k: v for k, v in before[p].items() if k not in ("links", "nlink")}
    # A path that is not in the generation: a clear error, exit 2, nothing written.
    r = backup("restore-file", "latest", "no/such/file", "--to", str(tmp_path / "none"),
               "--target", str(target))
    assert r.returncode == 2 and "not in generation" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "none").exists()


def test_verify_live_lists_what_changed_since(tmp_path: Path, target: Path) -> None:
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    for n in range(5):
        (src / "etc" / f"conf{n}").write_text(f"setting = {n}\n")
    assert backup("create", "--source", str(src), "--target", str(target)).returncode == 0
    r = backup("verify", "--live", "--target", str(target))
    assert r.returncode == 0 and "changed since" not in r.stdout, r.stdout
    (src / "etc" / "conf3").write_text("setting = changed\n")
    (src / "etc" / "conf4").unlink()
    r = backup("verify", "--live", "--target", str(target))
    assert r.returncode == 0, r.stdout  # the archives are intact; the system moved on
    assert "intact" in r.stdout
    changed = [line for line in r.stdout.splitlines() if line.startswith("changed since")]
    assert any("/etc/conf3" in line for line in changed), r.stdout
    assert any("/etc/conf4" in line for line in changed), r.stdout
    assert not any("conf1" in line for line in changed)
