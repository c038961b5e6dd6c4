"""The dnf 4 command line as an adapter: pending updates, advisories, upgrades, history and
needs-restarting, with typed errors (lock held, repository unreachable, scriptlet failed).

Always the CLI, never dnf's Python API (importable only by the system's own interpreter).
Every run is non-interactive (``-y`` or ``--assumeno``), in the C locale, with a timeout, and
with ``exit_on_lock``: dnf otherwise waits for another dnf's lock for ever.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from agent.quote import quote
from agent.system.commands import (
    CommandError,
    CommandNotFound,
    CommandRunner,
    CommandTimeout,
    Completed,
)
from patch.dnfparse import (
    REPO_TROUBLE,
    Advisory,
    Change,
    Transaction,
    Update,
    advisories_from,
    failed_repos,
    ignored_repos,
    lock_holder,
    parse_check_update,
    parse_history_ids,
    parse_history_info,
    parse_reboot_hint,
    parse_transaction_table,
    parse_updateinfo_info,
    parse_updateinfo_list,
    rpm_lock,
    scriptlet_errors,
)
from patch.errors import (
    DnfError,
    DnfLocked,
    DnfNotInstalled,
    DnfPluginMissing,
    DnfRepoError,
    DnfTimeout,
    DnfTransactionError,
)
from patch.reboot import CORE_PACKAGES, RebootHint, core_packages_in, installtime_hint
from patch.updateinfo import issued_and_reboot

__all__ = ["CORE_PACKAGES", "Advisory", "Change", "Dnf", "DnfError", "DnfLocked",
           "DnfNotInstalled", "DnfPluginMissing", "DnfRepoError", "DnfTimeout",
           "DnfTransactionError", "RebootHint", "Transaction", "Update", "core_packages_in"]

log = logging.getLogger(__name__)

LOCKED = 200  # dnf's exit code when exit_on_lock finds the lock taken


class Dnf:
    """dnf against the running system, or against ``installroot`` (repositories from
    ``<root>/etc/yum.repos.d``, cache and history inside the root, releasever 9)."""

    def __init__(self, runner: CommandRunner, installroot: Path | None = None, *,
                 timeout: float = 1800.0, wait_for_lock: bool = False,
                 strict_repos: bool = True) -> None:
        self.runner = runner
        self.installroot = installroot
        self.timeout = timeout
        self.wait_for_lock = wait_for_lock
        self.strict_repos = strict_repos

    @property
    def root(self) -> Path:
        return self.installroot or Path("/")

    @property
    def cachedir(self) -> Path:
        # dnf puts the installroot in front of cachedir itself: --setopt=cachedir=<root>/...
        # would end up at <root>/<root>/...
        return self.root / "var/cache/dnf"

    def argv(self, args: Sequence[str]) -> list[str]:
        out = ["dnf"]
        if not self.wait_for_lock:
            out.append("--setopt=exit_on_lock=True")
        if self.strict_repos:
            # A repository the admin marked skip_if_unavailable=1 keeps that; only dnf.conf's
            # default (True on some distributions) is overridden: a check must not report
            # "nothing pending" because a repository was silently skipped.
            out.append("--setopt=skip_if_unavailable=False")
        if self.installroot is not None:
            root = str(self.installroot)
            out += [f"--installroot={root}", "--releasever=9",
                    f"--setopt=reposdir={root}/etc/yum.repos.d"]
        return out + list(args)

    # --- running --------------------------------------------------------------------------

    def _run(self, args: Sequence[str], ok: Sequence[int] = (0,),
             timeout: float | None = None) -> Completed:
        argv = self.argv(args)
        limit = self.timeout if timeout is None else timeout
        try:
            done = self.runner.run(argv, timeout=limit, ok_codes=range(256))
        except CommandNotFound:
            raise DnfNotInstalled(argv, None, "", "dnf is not installed") from None
        except CommandTimeout as e:
            pid = self.live_lock_holder()
            if pid is not None:
                raise DnfLocked(argv, None, e.stderr_tail, f"timed out after {limit:g} s "
                                f"waiting for the dnf lock held by {_who(pid)}", pid) from None
            raise DnfTimeout(argv, None, e.stderr_tail, e.reason) from None
        except CommandError as e:  # could not start, or killed by a signal
            raise DnfError(argv, e.returncode, e.stderr_tail, e.reason) from None
        if done.returncode not in ok:
            raise self._error(done)
        return done

    def _error(self, done: Completed) -> DnfError:
        text = done.stdout + "\n" + done.stderr
        argv, rc = list(done.argv), done.returncode
        pid = lock_holder(text)
        if rc == LOCKED or pid is not None:
            who = _who(pid) if pid is not None else "another process"
            return DnfLocked(argv, rc, done.stderr, f"another dnf holds the lock ({who})", pid)
        rpmlock = rpm_lock(text)
        if rpmlock is not None:
            pid = posix_lock_owner(Path(rpmlock))
            who = _who(pid) if pid is not None else "another process"
            return DnfLocked(argv, rc, done.stderr, f"the rpm database is locked by {who} "
                             f"({rpmlock})", pid)
        repos = failed_repos(text)
        if repos or any(s in text for s in REPO_TROUBLE):
            named = f": {', '.join(repos)}" if repos else ""
            return DnfRepoError(argv, rc, done.stderr, f"repository unreachable{named}", repos)
        return DnfError(argv, rc, done.stderr or done.stdout, _first_error(text, rc))

    def live_lock_holder(self) -> int | None:
        """A live process named in dnf's lock files (dnf 4 locks are files holding a pid,
        taken over when that process is gone): metadata and downloads in the cachedir, the
        rpmdb in the persistdir."""
        for path in (self.cachedir / "metadata_lock.pid", self.cachedir / "download_lock.pid",
                     self.root / "var/lib/dnf/rpmdb_lock.pid"):
            try:
                pid = int(path.read_text().strip())
            except (OSError, ValueError):
                continue
            if pid != os.getpid() and Path(f"/proc/{pid}").exists():
                return pid
        return None

    # --- what is pending ------------------------------------------------------------------

    def check_update(self, *, security: bool = False, exclude: Sequence[str] = (),
                     refresh: bool = True) -> list[Update]:
        """The pending updates (``dnf check-update``: exit 100 updates, 0 none, 1 error)."""
        args = ["check-update", *(["--refresh"] if refresh else []),
                *(["--security"] if security else []), *_excludes(exclude)]
        done = self._run(args, ok=(0, 100))
        skipped = ignored_repos(done.stderr)
        if skipped:
            log.warning("dnf skipped unreachable repositories (skip_if_unavailable): %s",
                        ", ".join(skipped))
        updates = parse_check_update(done.stdout)
        if done.returncode == 100 and not updates:
            raise DnfError(list(done.argv), 100, done.stdout[-600:],
                           "exit 100 (updates pending) but no package row was understood")
        return updates

    def advisories(self, *, security: bool = False, details: bool = True,
                   refresh: bool = False) -> list[Advisory]:
        """Advisories about the pending updates (``updateinfo list --updates``), with CVEs
        and dates from ``updateinfo info`` when ``details``, and issued dates and
        reboot_suggested from the cached updateinfo.xml."""
        flags = ["--updates", *(["--security"] if security else []),
                 *(["--refresh"] if refresh else [])]
        listed = parse_updateinfo_list(self._run(["-q", "updateinfo", "list", *flags]).stdout)
        if not listed:
            return []
        info = parse_updateinfo_info(self._run(["-q", "updateinfo", "info", *flags]).stdout) \
            if details else {}
        return advisories_from(listed, info, issued_and_reboot(self.cachedir, listed))

    def installed(self, names: Sequence[str] = ()) -> dict[tuple[str, str], str]:
        """(name, arch) -> evr of installed packages (all, or those ``names``)."""
        done = self._run(["-q", "repoquery", "--installed", "--qf",
                          "%{name}\t%{arch}\t%{evr}", *_specs(names)])
        out = {}
        for line in done.stdout.splitlines():
            parts = line.split("\t")
            if len(parts) == 3:
                out[(parts[0], parts[1])] = parts[2]
        return out

    # --- changing the system --------------------------------------------------------------

    def upgrade(self, *, security: bool = False, exclude: Sequence[str] = (),
                dry_run: bool = False, packages: Sequence[str] = (),
                refresh: bool = True) -> Transaction:
        """``dnf upgrade`` (only security fixes, if ``security``; never the ``exclude``d).
        A dry run (``--assumeno``) returns what would change and changes nothing."""
        args = ["upgrade", *(["--refresh"] if refresh else []),
                *(["--security"] if security else []), *_excludes(exclude), *_specs(packages)]
        if dry_run:
            return self._dry_run(args)
        return self._transact(["-y", *args])

    def undo(self, tid: int) -> Transaction:
        """``dnf history undo N``: the reverse of transaction N, as a new transaction."""
        return self._transact(["-y", "history", "undo", str(int(tid))])

    def _dry_run(self, args: Sequence[str]) -> Transaction:
        done = self._run(["--assumeno", *args], ok=(0, 1))
        if done.returncode == 1 and "Operation aborted" not in done.stderr:
            raise self._error(done)
        rows = parse_transaction_table(done.stdout)
        if not rows:
            return Transaction(None, dry_run=True)
        now = self.installed(sorted({name for _, name, _, _ in rows}))
        changes = []
        for action, name, arch, evr in rows:
            before = now.get((name, arch))
            if action == "remove":
                changes.append(Change(name, arch, action, evr, None))
            else:
                changes.append(Change(name, arch, action, before, evr))
        return Transaction(None, tuple(changes), dry_run=True)

    def _transact(self, args: Sequence[str]) -> Transaction:
        before = self.last_transaction_id()
        done = self._run(args, ok=(0, 1))
        after = self.last_transaction_id()
        tx = self.history_info(after) if after is not None and after != before else None
        if done.returncode != 0:
            err = self._error(done)
            # A held rpm lock fails the transaction at its start, recorded as aborted.
            if tx is None or isinstance(err, (DnfLocked, DnfRepoError)):
                raise err
            raise DnfTransactionError(list(done.argv), done.returncode, done.stderr,
                                      _first_error(done.stdout + done.stderr, 1), tx)
        failed = scriptlet_errors(done.stdout + "\n" + done.stderr)
        if tx is not None:
            failed = tuple(dict.fromkeys(failed + tx.scriptlet_errors))
            tx = replace(tx, scriptlet_errors=failed)
        if failed:
            raise DnfTransactionError(list(done.argv), 0, done.stderr,
                                      f"scriptlet failed: {'; '.join(failed)}", tx)
        return tx if tx is not None else Transaction(None)

    # --- history --------------------------------------------------------------------------

    def last_transaction_id(self) -> int | None:
        ids = parse_history_ids(self._run(["-q", "history", "list"]).stdout)
        return max(ids) if ids else None

    def history_info(self, tid: int) -> Transaction:
        return parse_history_info(self._run(["-q", "history", "info", str(int(tid))]).stdout)

    # --- restarts and reboots -------------------------------------------------------------

    def services_needing_restart(self) -> list[str]:
        """systemd services running code that an update replaced (``needs-restarting -s``).
        An installroot has no running processes of its own: none, and the log says so."""
        if self.installroot is not None:
            log.info("needs-restarting -s: processes cannot be matched to packages in an "
                     "installroot (%s); reporting no services", self.installroot)
            return []
        done = self._run(["-q", "needs-restarting", "-s"], ok=(0, 1))
        if done.returncode != 0:
            raise self._plugin_missing(done) or self._error(done)
        return [s.strip() for s in done.stdout.splitlines() if s.strip().endswith(".service")]

    def reboot_hint(self, now: float) -> RebootHint:
        """Whether core packages were updated since boot (``needs-restarting -r``: exit 1
        and the list when a reboot is needed); without the plugin, the same test made on
        the packages' install times."""
        done = self._run(["-q", "needs-restarting", "-r"], ok=(0, 1))
        if done.returncode == 0:
            return RebootHint(False, (), "needs-restarting")
        if self._plugin_missing(done):
            return self.reboot_hint_from_installtime(now)
        if "Reboot is required" in done.stdout:
            return RebootHint(True, tuple(parse_reboot_hint(done.stdout)), "needs-restarting")
        raise self._error(done)

    def reboot_hint_from_installtime(self, now: float, booted: float | None = None
                                     ) -> RebootHint:
        """needs-restarting -r's test without the plugin (see patch.reboot); ``now`` dates
        the boot (from the uptime) unless ``booted`` is given."""
        return installtime_hint(self.runner, self.installroot, now=now, booted=booted)

    @staticmethod
    def _plugin_missing(done: Completed) -> DnfPluginMissing | None:
        if "No such command: needs-restarting" not in done.stderr:
            return None
        return DnfPluginMissing(list(done.argv), done.returncode, done.stderr,
                                "needs-restarting is not installed (dnf-plugins-core)")


def _excludes(names: Sequence[str]) -> list[str]:
    return [f"--exclude={n}" for n in _specs(names)]


def _specs(names: Sequence[str]) -> list[str]:
    for n in names:
        if not n or n.startswith("-") or any(c.isspace() for c in n):
            raise ValueError(f"not a package name or glob: {quote(n)}")
    return list(names)


def _first_error(text: str, rc: int) -> str:
    """dnf's first "Error: ..." (with the next line when it is only "Error:", as before a
    list of dependency problems)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Error:"):
            more = [s.strip() for s in lines[i + 1:i + 2] if s.strip()]
            return " ".join([line.strip(), *(more if not line[6:].strip() else [])])[:300]
    return f"exited {rc}"


def posix_lock_owner(path: Path) -> int | None:
    """The pid holding a POSIX lock on ``path``, from /proc/locks."""
    try:
        st = path.stat()
        locks = Path("/proc/locks").read_text()
    except OSError:
        return None
    for line in locks.splitlines():
        f = line.split()
        if len(f) >= 6 and f[1] == "POSIX" and f[4].isdigit() and \
                f[5].rsplit(":", 1)[-1] == str(st.st_ino):
            return int(f[4])
    return None


def _who(pid: int) -> str:
    try:
        return f"pid {pid}: {Path(f'/proc/{pid}/comm').read_text().strip()}"
    except OSError:
        return f"pid {pid}"
