"""dnf's typed errors, apart from the adapter (patch.dnf) so that what raises them
(patch.reboot, which patch.dnf imports) needs no import of the adapter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from agent.system.commands import CommandError

if TYPE_CHECKING:
    from patch.dnfparse import Transaction


class DnfError(CommandError):
    """dnf failed; the base of the more specific errors below."""


class DnfNotInstalled(DnfError):
    pass


class DnfTimeout(DnfError):
    pass


class DnfPluginMissing(DnfError):
    """A dnf-plugins-core command (needs-restarting) is not installed."""


class DnfLocked(DnfError):
    """Another dnf holds dnf's lock, or something holds rpm's transaction lock."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str, reason: str,
                 pid: int | None) -> None:
        super().__init__(argv, returncode, stderr, reason)
        self.pid = pid


class DnfRepoError(DnfError):
    """A repository could not be reached (metadata or packages not downloaded)."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str, reason: str,
                 repos: Sequence[str] = ()) -> None:
        super().__init__(argv, returncode, stderr, reason)
        self.repos = list(repos)


class DnfTransactionError(DnfError):
    """The transaction failed, or ran with a failing scriptlet (which rpm reports as a
    warning and dnf as "Complete!", exit 0). ``transaction`` is what history recorded (None
    if nothing was recorded): packages may have changed all the same."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str, reason: str,
                 transaction: Transaction | None) -> None:
        super().__init__(argv, returncode, stderr, reason)
        self.transaction = transaction
