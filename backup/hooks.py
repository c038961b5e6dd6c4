"""``[backup] pre_hooks`` / ``post_hooks``: commands that quiesce services around a backup
(``postsuper -h ALL`` ... ``postsuper -H ALL``, a database dump). argv lists, never a shell."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from backup.options import BackupOptions


class HookError(Exception):
    pass


def _run(argv: tuple[str, ...], timeout: float) -> str | None:
    """None when the hook succeeded, else why not."""
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                           check=False)
    except subprocess.TimeoutExpired:
        return f"took longer than {timeout:g} s (killed)"
    except OSError as e:
        return e.strerror or str(e)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).decode("utf-8", "replace").strip()[-300:]
        return f"exited {p.returncode}" + (f": {tail}" if tail else "")
    return None


class Hooks:
    def __init__(self, opts: BackupOptions, say: Callable[[str], None]) -> None:
        self.opts, self.say = opts, say

    def pre(self) -> None:
        for argv in self.opts.pre_hooks:
            self.say(f"pre hook: {' '.join(argv)}")
            why = _run(argv, self.opts.hook_timeout)
            if why is not None:
                raise HookError(f"pre hook {' '.join(argv)} {why}; the backup was not started")

    def post(self) -> list[str]:
        """Every post hook runs, also after a failure; the ones that failed, said."""
        failed = []
        for argv in self.opts.post_hooks:
            self.say(f"post hook: {' '.join(argv)}")
            why = _run(argv, self.opts.hook_timeout)
            if why is not None:
                failed.append(f"post hook {' '.join(argv)} {why}")
        return failed
