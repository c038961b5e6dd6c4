"""What a committed generation is, in lines a person reads: stdout of ``steward backup create``
and the USB backup's report share them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from backup.progress import human

if TYPE_CHECKING:
    from backup.create import Outcome


def committed_lines(out: Outcome, target: Path, keep: int) -> list[str]:
    """What a committed generation is, for stdout and the USB report."""
    t = out.manifest["totals"]
    segs = len(out.manifest["segments"])
    lines = [f"generation {out.generation.id} committed in {target}: {t['entries']} entries, "
             f"{human(t['bytes'])} -> {human(t['stored'])} (written {human(t['written'])}, "
             f"{t['reused_segments']} of {segs} archives reused), "
             f"{out.manifest['seconds']:.1f} s, read back and verified"]
    if out.manifest["warnings"]:
        lines.append(f"{len(out.manifest['warnings'])} warnings (see manifest.json), first: "
                     f"{out.manifest['warnings'][0]}")
    moved = out.manifest.get("changed", [])
    if moved:
        lines.append(f"{t.get('changed', len(moved))} files changed while being read (archived "
                     "as read; see manifest.json \"changed\"):")
        lines += [f"  {c['path']}: {c['how']}" for c in moved[:20]]
        if len(moved) > 20:
            lines.append(f"  ... and {t.get('changed', len(moved)) - 20} more")
    lines += [f"deleted generation {gen} ([backup] keep = {keep})" for gen in out.dropped]
    return lines
