"""``steward backup create --usb``: find the steward drive, mount it, write a generation into
its generations folder (verified, then retention), run the steps that follow a backup, unmount
it, and report on stdout and by mail through the outbox."""

from __future__ import annotations

import dataclasses
import glob
import html
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from agent.config.sections import EmailOptions
from agent.notify.templates import SUBJECT_MAX, build_message
from agent.system.commands import CommandRunner
from backup.options import BackupOptions
from backup.progress import human
from backup.summary import committed_lines
from usbimage.drive import Drive, Mounted, MountError, find_drives, mounted, select
from usbimage.options import UsbOptions

if TYPE_CHECKING:
    from backup.create import Outcome

Step = Callable[[Mounted, "Outcome"], list[str]]
# Run in order on the still-mounted drive once a generation is committed; each returns lines for
# the report, or raises BackupError (the generation stays; the run counts as having problems).


def after_backup(usb: UsbOptions) -> tuple[Step, ...]:
    if not usb.rescue:
        return ()
    from usbimage.rescuestep import after_backup as rescue_step

    return (rescue_step,)


@dataclass
class UsbBackup:
    """One backup to the drive, as the report tells it."""

    source: str
    drive: Drive
    host: str = field(default_factory=socket.gethostname)
    mount: str = ""  # where the drive was (is) mounted; "" if it could not be
    ours: bool = True  # steward mounted it, so it is unmounted now
    target: str = ""
    outcome: Outcome | None = None  # set once the generation is committed
    failure: str = ""  # why nothing was committed
    problems: list[str] = field(default_factory=list)  # after the commit: hooks, unmount
    notes: list[str] = field(default_factory=list)  # what the backup said on the way
    space: str = ""
    keep: int = 0

    @property
    def code(self) -> int:
        return 1 if self.failure or self.problems else 0

    def subject(self) -> str:
        if self.outcome is None:
            text = f"backup to USB FAILED: {self.failure}"
        else:
            t = self.outcome.manifest["totals"]
            text = (f"backup to USB done{', with problems' if self.problems else ''}: "
                    f"{self.outcome.generation.id}, {human(t['stored'])}, "
                    f"{t['reused_segments']} archives reused")
        subject = " ".join(f"[steward] {self.host}: {text}".split())
        return subject if len(subject) <= SUBJECT_MAX else subject[:SUBJECT_MAX - 1] + "…"

    def text(self) -> str:
        lines = [f"Backup of {self.source} on {self.host} to the steward drive "
                 f"{self.drive.describe()}", ""]
        if self.outcome is None:
            lines.append(f"FAILED: {self.failure}")
        else:
            lines += committed_lines(self.outcome, Path(self.target), self.keep)
        lines += [f"PROBLEM: {p}" for p in self.problems]
        if self.notes:
            lines += ["", *self.notes]
        if self.space:
            lines += ["", f"On the drive: {self.space}"]
        if self.mount and not self.ours:
            lines.append(f"The drive stays mounted at {self.mount}, as it was before.")
        elif self.mount and not any(p.startswith("cannot unmount") for p in self.problems):
            lines.append("The drive is unmounted: it can be unplugged.")
        return "\n".join(lines) + "\n"


def _excluding(opts: BackupOptions, source: str, mount: Path) -> BackupOptions:
    """``opts`` leaving out the whole drive when it is mounted inside the source."""
    rel = os.path.relpath(os.path.realpath(mount), os.path.realpath(source))
    if rel == "." or rel.startswith(".."):
        return opts
    return dataclasses.replace(opts, exclude=(*opts.exclude, glob.escape("/" + rel)))


def _space(target: Path) -> str:
    from backup.store import Store

    vfs = os.statvfs(target)
    gens = Store(target).generations()
    used = (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize
    held = "no generations" if not gens else (
        f"1 generation ({gens[0].id})" if len(gens) == 1 else
        f"{len(gens)} generations ({gens[0].id} to {gens[-1].id})")
    return (f"{held}, {human(used)} used, {human(vfs.f_bavail * vfs.f_frsize)} free of "
            f"{human(vfs.f_blocks * vfs.f_frsize)}")


def backup_to_usb(source: str, opts: BackupOptions, usb: UsbOptions, *, device: str | None,
                  runner: CommandRunner, jobs: int | None = None,
                  steps: Sequence[Step] | None = None) -> UsbBackup:
    """Find the drive (DriveError: none, several, not the one named), mount it, write a
    generation into its generations folder (verified; retention after the commit), run
    ``steps``, unmount it. Failures after the drive was found are in the result."""
    from backup.create import BackupError, create

    job = UsbBackup(source, select(find_drives(runner), device), keep=opts.keep)

    def say(line: str) -> None:
        print(line, flush=True)
        job.notes.append(line)

    try:
        with mounted(job.drive, usb.mount_dir, runner) as mnt:
            job.mount, job.ours, job.target = str(mnt.path), mnt.ours, str(mnt.target)
            job.outcome = create(source, Path(job.target), _excluding(opts, source, mnt.path),
                                 say=say, jobs=jobs)
            job.problems += job.outcome.hook_failures
            for step in after_backup(usb) if steps is None else steps:
                try:
                    job.notes += step(mnt, job.outcome)
                except BackupError as e:
                    job.problems.append(str(e))
            job.space = _space(Path(job.target))
    except MountError as e:
        if job.outcome is None:
            job.failure = str(e)
        else:
            job.problems.append(str(e))
    except BackupError as e:
        job.failure = f"nothing committed: {e}"
    except OSError as e:  # the generations folder or statvfs on a drive gone bad
        what = f"{e.filename or job.target or usb.mount_dir}: {e.strerror or e}"
        if job.outcome is None:
            job.failure = what
        else:
            job.problems.append(what)
    return job


def mail_report(job: UsbBackup, email: EmailOptions, state_dir: Path, out: TextIO,
                now: float) -> None:
    """Print the report and mail it, dated ``now``, through the outbox (kept there for steward
    run to retry when no relay takes it now); every [notify.email] recipient gets it."""
    from agent.notify.commands import mail_now

    text = job.text()
    out.write("\n" + text)
    if not email.enabled:
        out.write("report not mailed: no [notify.email] recipients configured\n")
        return
    msg = build_message(job.subject(), text, f"<pre>{html.escape(text)}</pre>\n",
                        sender=email.sender, kind="backup", to=[a for a, _ in email.to],
                        date=now)
    mail_now(msg, email, state_dir, job.host, out)
