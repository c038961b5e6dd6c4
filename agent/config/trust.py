"""Whether a file steward reads as root can be trusted: the config (others must not be able
to change what root runs) and secrets (others must not be able to read them).

Parent directories are checked as sshd's StrictModes checks the paths of its keys: each
directory from the file's up to / must be owned by root or the user steward runs as and not
be writable by group or others. A sticky directory (``/tmp``, mode 1777) is accepted when
root (or the user) owns it: there, others cannot remove or rename an entry they do not own,
so the file below it (itself checked) cannot be swapped.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def _owners() -> tuple[int, ...]:
    return (0, os.geteuid())


def parent_problem(path: str) -> tuple[str, str] | None:
    """(problem, remedy) for the first parent directory of ``path`` others could change."""
    real = Path(os.path.realpath(path))
    for folder in real.parents:
        try:
            st = os.stat(folder)
        except OSError as e:
            return (f"cannot check its directory {folder}: {e.strerror}", "")
        if st.st_uid not in _owners():
            return (f"its directory {folder} is owned by uid {st.st_uid}, not root",
                    f"chown root: {folder}")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            return (f"its directory {folder} has mode {stat.S_IMODE(st.st_mode):04o}: group "
                    "or others could replace the file", f"chmod go-w {folder}")
    return None


def secret_problem(path: str) -> tuple[str, str] | None:
    """(problem, remedy) when ``path`` is not a secret steward may use: a non-empty regular
    file, mode 0600 or stricter, owned by root or the running user, in trusted directories."""
    try:
        # O_NONBLOCK: a FIFO put there must not hang the check; fstat what was opened.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        return ("no such file", f"write the password into {path} (chmod 600 {path})")
    except PermissionError:
        return ("permission denied: steward cannot read it",
                f"chown root: {path} (or the user steward runs as)")
    except OSError as e:
        return (f"cannot open it: {e.strerror}", "")
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        return ("not a regular file", f"put the password in a file at {path}")
    if st.st_mode & 0o077:
        return (f"mode {stat.S_IMODE(st.st_mode):04o} lets others read the secret (want 0600)",
                f"chmod 600 {path}")
    if st.st_uid not in _owners():
        return (f"owned by uid {st.st_uid}, not root or the user steward runs as",
                f"chown root: {path}")
    if st.st_size == 0:
        return ("empty", f"write the password into {path}")
    return parent_problem(path)
