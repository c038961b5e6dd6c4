"""Running external commands: argv lists, LC_ALL=C, a timeout, output captured, typed errors."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
_TAIL = 600  # characters of stderr kept in an error


class CommandError(Exception):
    """A command could not be run, exited non-zero, or overran its timeout."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str,
                 reason: str = "") -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr_tail = stderr[-_TAIL:].strip()
        self.reason = reason or f"exited {returncode}"
        super().__init__(str(self))

    def __str__(self) -> str:
        tail = f": {self.stderr_tail}" if self.stderr_tail else ""
        return f"{' '.join(self.argv)}: {self.reason}{tail}"


class CommandTimeout(CommandError):
    pass


class CommandNotFound(CommandError):
    pass


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class CommandRunner:
    """Runs argv lists. ``ok_codes`` lists exit codes that are answers, not failures."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        base = dict(os.environ if env is None else env)
        base.update(LC_ALL="C", LANG="C")
        self._env = base

    def which(self, program: str) -> str | None:
        """Where ``program`` would be found on this runner's PATH (None: not installed)."""
        return shutil.which(program, path=self._env.get("PATH", os.defpath))

    def run(self, argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT,
            ok_codes: Sequence[int] = (0,), input: str | None = None) -> Completed:
        if isinstance(argv, str):
            raise TypeError("argv must be a list of strings, not a command line")
        args = tuple(str(a) for a in argv)
        log.debug("run %s (timeout %ss)", args, timeout)
        try:
            proc = subprocess.run(
                args, input=input, capture_output=True, text=True, errors="replace",
                timeout=timeout, env=self._env, check=False,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise CommandNotFound(args, None, "", "command not found") from None
        except subprocess.TimeoutExpired as e:
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else ""
            raise CommandTimeout(args, None, err, f"timed out after {timeout:g} s") from None
        except OSError as e:
            raise CommandError(args, None, "", f"could not start: {e.strerror}") from None
        if proc.returncode not in ok_codes:
            raise CommandError(args, proc.returncode, proc.stderr or proc.stdout)
        return Completed(args, proc.returncode, proc.stdout, proc.stderr)
