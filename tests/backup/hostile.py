"""Hostile generations, made as whoever can write the drive would make them: segments built
with GNU tar (``-P`` keeps any name as given, ``--transform`` renames) and zstd, indexes
from their listings, manifest and SHA256SUMS recomputed, so ``backup verify`` finds the
generation intact."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

_KINDS = {tarfile.REGTYPE: "f", tarfile.DIRTYPE: "d", tarfile.SYMTYPE: "l",
          tarfile.LNKTYPE: "h", tarfile.CHRTYPE: "c", tarfile.BLKTYPE: "b",
          tarfile.FIFOTYPE: "p"}


def tar_of(scratch: Path, names: list[str], transform: str = "") -> bytes:
    """A posix tar stream of ``names`` under ``scratch`` (in that order, no recursion)."""
    argv = ["tar", "--create", "--file=-", "--format=posix", "--numeric-owner", "-P",
            "--no-recursion", "-C", str(scratch)]
    if transform:
        argv.append(f"--transform={transform}")
    done = subprocess.run([*argv, "--", *names], capture_output=True, timeout=60, check=True)
    return done.stdout


def _rows(data: bytes, prefix: str) -> list[list[object]]:
    rows: list[list[object]] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as t:
            for m in t:
                rel = "/".join(p for p in m.name.split("/") if p not in ("", "."))
                path = "/" + "/".join(p for p in (prefix, rel) if p)
                target = m.linkname if m.issym() else ("/" + m.linkname if m.islnk() else "")
                rows.append([path, _KINDS.get(m.type, "f"), m.mode, m.uid, m.gid, m.size,
                             int(m.mtime * 1e9), target])
    except tarfile.ReadError:  # a segment broken on purpose: its index stops there
        pass
    return rows


def forge(gen: Path, segments: list[tuple[str, bytes]], fs: int = 0,
          keep: bool = False) -> None:
    """Replace the segments of filesystem ``fs`` in ``gen`` with these (kind, tar stream),
    or with ``keep`` add them after its own; the other filesystems' segments stay."""
    manifest = json.loads((gen / "manifest.json").read_text())
    prefix = manifest["filesystems"][fs]["prefix"]
    kept = [s for s in manifest["segments"] if keep or s["fs"] != fs]
    new = []
    for kind, data in segments:
        z = subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True,
                           timeout=60, check=True).stdout
        new.append(({"fs": fs, "kind": kind, "bytes": len(data), "stored": len(z),
                     "sha256": hashlib.sha256(z).hexdigest(), "reused": None,
                     "key": hashlib.sha256(data).hexdigest()}, z, _rows(data, prefix)))
    seg_dir = gen / "segments"
    files = {}
    for seg in kept:
        files[seg["name"]] = ((seg_dir / f"{seg['name']}.tar.zst").read_bytes(),
                              (seg_dir / f"{seg['name']}.idx.gz").read_bytes(), seg)
    for p in seg_dir.iterdir():
        p.unlink()
    segs = []
    for seg in kept:
        z, idx, _ = files[seg["name"]]
        segs.append((seg, z, idx))
    for seg, z, rows in new:
        seg["entries"] = len(rows)
        segs.append((seg, z, gzip.compress(json.dumps(rows).encode())))
    manifest["segments"] = []
    for i, (seg, z, idx) in enumerate(segs):
        seg["name"] = f"{i:04d}"
        (seg_dir / f"{i:04d}.tar.zst").write_bytes(z)
        (seg_dir / f"{i:04d}.idx.gz").write_bytes(idx)
        manifest["segments"].append(seg)
    (gen / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    resum(gen)


def resum(gen: Path) -> None:
    """SHA256SUMS over what the generation now holds; the last verify forgotten."""
    lines = []
    for p in [*sorted((gen / "segments").iterdir()), gen / "layout.json",
              gen / "manifest.json"]:
        lines.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(gen)}")
    (gen / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    if (gen / "verify.json").exists():
        os.unlink(gen / "verify.json")


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """What is under ``root`` (type, mode, owner, size, mtime, content or target), without
    following a symlink: to compare a folder outside a restore before and after."""
    out: dict[str, tuple[object, ...]] = {}
    for top, dirs, files in os.walk(root):
        for name in [".", *dirs, *files] if top == str(root) else [*dirs, *files]:
            path = os.path.normpath(os.path.join(top, name))
            st = os.lstat(path)
            what: object = None
            if os.path.islink(path):
                what = os.readlink(path)
            elif os.path.isfile(path):
                what = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size,
                                                st.st_mtime_ns, st.st_nlink, what)
    return out
