"""``steward patch apply``: one patch run from health check to report.

Maintenance mode for the run; health before; the safety point (dnf history id, optionally a
backup); ``dnf upgrade`` retried while dnf is locked or a repository is unreachable, until the
window ends; restarts of the services that run replaced code; health after, and the exact
``dnf history undo N`` (run with rollback_on_failure) when it got worse; the reboot by policy
with its loop guard; pending.json refreshed; then the report (patch.report), before the reboot.
With an installroot or a dry run nothing on this host is touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from agent.env import Env
from agent.memory import Maintenance
from agent.registry import Registry
from agent.state import StateDir
from agent.system.commands import CommandError
from backup.options import BackupOptions
from patch.dnf import (
    Advisory,
    Dnf,
    DnfError,
    DnfLocked,
    DnfRepoError,
    DnfTimeout,
    DnfTransactionError,
    RebootHint,
    Transaction,
)
from patch.health import better as got_better
from patch.health import check_health, worse
from patch.options import PatchOptions
from patch.outcome import Outcome, Restart, Rollback
from patch.reboot import extra_core
from patch.rebooting import decide, guard, record, run_reboot, settle

log = logging.getLogger(__name__)

SETTLE_TIMEOUT = 90.0  # seconds a restarted service may take to become active
# Never restarted one by one (a reboot is their restart): the bus, user managers, and the
# transient unit this apply itself runs in.
NO_RESTART = ("dbus.service", "dbus-broker.service", "user@", "steward-patch")


@dataclass(frozen=True)
class Request:
    security: bool
    exclude: tuple[str, ...] = ()
    dry_run: bool = False
    rollback_on_failure: bool = False
    installroot: Path | None = None
    window_end: float | None = None  # epoch; None: start + [patch] duration
    # Maintenance, restarts and reboots on this machine; None: unless installroot or dry run.
    host_actions: bool | None = None

    @property
    def acts_on_host(self) -> bool:
        if self.host_actions is not None:
            return self.host_actions and not self.dry_run
        return self.installroot is None and not self.dry_run


class Patcher:
    """One apply. ``report`` renders, prints and mails the outcome (setting ``delivered``);
    it is called once, before a reboot (and again if the reboot command fails). ``clock`` and
    ``sleep`` are the env's clock unless given."""

    def __init__(self, env: Env, registry: Registry, dnf: Dnf, *, host: str,
                 report: Callable[[Outcome], None], say: Callable[[str], None] = log.info,
                 clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], None] | None = None) -> None:
        self.env, self.registry, self.dnf, self.host = env, registry, dnf, host
        self.opts = env.config.section(PatchOptions)
        self.report, self.say = report, say
        self.clock, self.sleep = clock or env.clock.now, sleep or env.clock.sleep

    def run(self, req: Request) -> Outcome:
        now = self.clock()
        out = Outcome(self.host, now, "security" if req.security else "all",
                      exclude=req.exclude, dry_run=req.dry_run,
                      installroot=str(req.installroot) if req.installroot else None,
                      host_actions=req.acts_on_host)
        window_end = req.window_end or now + self.opts.duration * 60
        with self._maintenance(req, now):
            try:
                self._patch(req, out, window_end)
            except Exception as e:  # a bug must not make the run silent: report, then raise
                out.failure, out.failure_kind = f"steward failed: {type(e).__name__}: {e}", \
                    "internal"
                out.finished = self.clock()
                self.report(out)
                raise
            out.finished = self.clock()
            self.report(out)
            if out.reboot is not None and out.reboot_requested:
                self._reboot(out, window_end)
        return out

    # --- maintenance ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _maintenance(self, req: Request, now: float) -> Iterator[None]:
        if not req.acts_on_host:
            yield
            return
        state = StateDir(self.env.state_dir, self.env.clock)
        state.ensure()
        before = state.maintenance()
        until = now + self.opts.duration * 60
        state.set_maintenance(Maintenance(max(until, before.until or 0.0), dict(before.units)))
        self.say(f"maintenance mode until {time.strftime('%H:%M', time.localtime(until))}")
        try:
            yield
        finally:
            state.set_maintenance(before)
            self.say("maintenance mode restored to what it was before")

    # --- the steps ------------------------------------------------------------------------

    def _patch(self, req: Request, out: Outcome, window_end: float) -> None:
        env = self.env if req.installroot is None else replace(self.env,
                                                               sysroot=req.installroot)
        self.say("health before: running every enabled check")
        out.health_before = check_health(self.registry, env)
        self.say(f"health before: {out.health_before.counts()}")
        if self.opts.pre_backup and not req.dry_run and not self._backup(req, out):
            return
        tx = self._upgrade(req, out, window_end)
        if tx is None:
            return
        out.transaction = tx
        if req.dry_run:
            out.reboot = decide(self.opts.reboot, [c.name for c in tx.changes],
                                extra_core=extra_core(self.dnf.root))
            return
        if not out.failure:
            self._restart(req, out)
        self.say("health after: running every enabled check")
        out.health_after = check_health(self.registry, env)
        out.worse = tuple(worse(out.health_before, out.health_after))
        out.better = tuple(got_better(out.health_before, out.health_after))
        self.say(f"health after: {out.health_after.counts()}"
                 f"{f'; worse: {len(out.worse)}' if out.worse else ''}")
        if tx.id is not None and (out.worse or out.failure):
            why_not = "a rollback runs by itself only when health got worse" \
                if not out.worse else "--rollback-on-failure not given"
            out.rollback = Rollback(self.undo_command(tx.id), why_not=why_not)
            if out.worse and req.rollback_on_failure:
                self._rollback(req, out, env, tx.id)
        if not out.failure and not (out.rollback and out.rollback.ran):
            self._decide_reboot(req, out, window_end)
        if req.installroot is None:
            self._refresh_pending(out)

    def _backup(self, req: Request, out: Outcome) -> bool:
        from backup.create import BackupError, create

        opts = self.env.config.section(BackupOptions)
        target = opts.target
        assert target is not None  # patch.cli refuses pre_backup without a target
        source = os.path.realpath(req.installroot or "/")
        self.say(f"pre-patch backup of {source} to {target}")
        try:
            done = create(source, Path(target), opts, say=self.say)
        except BackupError as e:
            out.failure, out.failure_kind = f"pre-patch backup failed: {e}", "backup"
            return False
        out.backup = f"generation {done.generation.id} committed in {target}"
        if done.hook_failures:
            out.notes.append("pre-patch backup: " + "; ".join(done.hook_failures))
        return True

    def _upgrade(self, req: Request, out: Outcome, window_end: float) -> Transaction | None:
        """The safety point, the advisories and the upgrade, retried as one while dnf is
        locked or a repository unreachable; None when nothing was applied."""
        retry = self.opts.retry_interval * 60
        while True:
            try:
                out.history_before = self.dnf.last_transaction_id()
                out.history_read = True
                out.advisories = self._advisories(req, out)
                self.say(f"dnf upgrade ({out.mode}{', dry run' if req.dry_run else ''})")
                return self.dnf.upgrade(security=req.security, exclude=req.exclude,
                                        dry_run=req.dry_run)
            except (DnfLocked, DnfRepoError) as e:
                now = self.clock()
                out.attempts.append(f"{time.strftime('%H:%M:%S', time.localtime(now))}: "
                                    f"{e.reason}")
                if now + retry >= window_end:
                    kind = "locked" if isinstance(e, DnfLocked) else "repository"
                    what = "dnf was locked" if kind == "locked" else \
                        "a repository was unreachable"
                    out.failure, out.failure_kind = (
                        f"{what} until the window closed ({len(out.attempts)} "
                        f"attempt{'s' if len(out.attempts) > 1 else ''}): {e.reason}", kind)
                    return None
                self.say(f"dnf: {e.reason}; trying again in {retry:g} s")
                self.sleep(retry)
            except DnfTransactionError as e:
                out.failure, out.failure_kind = f"dnf transaction error: {e.reason}", \
                    "transaction"
                return e.transaction  # packages may have changed all the same
            except DnfError as e:
                kind = "timed out" if isinstance(e, DnfTimeout) else "failed"
                out.failure, out.failure_kind = f"dnf {kind}: {e}", "dnf"
                return None

    def _advisories(self, req: Request, out: Outcome) -> tuple[Advisory, ...]:
        """For the report only: a failure other than a lock or a repository does not stop
        the patch."""
        try:
            return tuple(self.dnf.advisories(security=req.security, refresh=True))
        except (DnfLocked, DnfRepoError):
            raise
        except DnfError as e:
            out.notes.append(f"advisories not looked up: {e}")
            return ()

    def undo_command(self, tid: int) -> str:
        """``dnf history undo N`` as a person types it (with the installroot's options)."""
        opts = [a for a in self.dnf.argv([])[1:]
                if not a.startswith(("--setopt=exit_on_lock", "--setopt=skip_if"))]
        return shlex.join(["dnf", *opts, "history", "undo", str(tid)])

    def _restart(self, req: Request, out: Outcome) -> None:
        if req.installroot is not None:
            out.restart_note = ("services are not restarted in an installroot: the updated "
                                "packages' services start with the new code when the target "
                                "boots")
            return
        if not req.acts_on_host:
            return
        try:
            units = self.dnf.services_needing_restart()
        except DnfError as e:
            out.restart_note = f"cannot tell which services need a restart: {e}"
            return
        for unit in units:
            if any(unit.startswith(p) for p in NO_RESTART):
                out.restarts.append(Restart(unit, True, "not restarted: a reboot restarts it"))
                continue
            self.say(f"restarting {unit}")
            out.restarts.append(self._restart_one(unit))

    def _restart_one(self, unit: str) -> Restart:
        systemd = self.env.systemd
        try:
            systemd.restart(unit)
            deadline = self.clock() + SETTLE_TIMEOUT
            while True:
                [st] = systemd.show([unit])
                if st.active_state not in ("activating", "deactivating", "reloading") or \
                        self.clock() > deadline:
                    break
                self.sleep(1.0)
        except CommandError as e:
            return Restart(unit, False, f"restart failed: {e}")
        state = f"{st.active_state} ({st.sub_state})"
        return Restart(unit, st.active_state == "active", state)

    def _rollback(self, req: Request, out: Outcome, env: Env, tid: int) -> None:
        assert out.rollback is not None and out.health_before is not None
        self.say(f"health got worse: {out.rollback.command}")
        back: Transaction | None
        try:
            back = self.dnf.undo(tid)
        except DnfTransactionError as e:
            back, error = e.transaction, f"the undo failed: {e.reason}"
        except DnfError as e:
            out.rollback = replace(out.rollback, ran=True, error=f"the undo failed: {e}")
            return
        else:
            error = ""
        if req.acts_on_host and req.installroot is None:
            self._restart(req, out)
        again = check_health(self.registry, env)
        self.say(f"health after the rollback: {again.counts()}")
        out.rollback = replace(out.rollback, ran=True, transaction=back, error=error,
                               health=again,
                               still_worse=tuple(worse(out.health_before, again)))

    def _decide_reboot(self, req: Request, out: Outcome, window_end: float) -> None:
        hint: RebootHint | None = None
        if req.installroot is None:
            try:
                hint = self.dnf.reboot_hint(self.clock())
            except DnfError as e:
                out.notes.append(f"needs-restarting -r: {e}; judged from the transaction")
        out.reboot = decide(self.opts.reboot, [c.name for c in out.changes], hint,
                            extra_core(self.dnf.root))
        if not out.reboot.reboot:
            return
        if not req.acts_on_host:
            out.reboot_note = "nothing on this host is rebooted with --installroot"
            return
        out.reboot_note = guard(self.env.state_dir, self.clock())
        out.reboot_requested = not out.reboot_note
        out.reboot_command = tuple(self.opts.reboot_command)

    def _reboot(self, out: Outcome, window_end: float) -> None:
        assert out.reboot is not None
        argv = out.reboot_command
        record(self.env.state_dir, now=self.clock(), window_end=window_end, command=argv,
               packages=out.reboot.needed)
        self.say(f"rebooting: {shlex.join(argv)}")
        error = run_reboot(self.env.commands, argv)
        if error:
            settle(self.env.state_dir, "failed", self.clock())  # reported here, not at start
            out.reboot_error = error
            out.reboot_requested = False
            self.report(out)  # the first report said "rebooting now"

    def _refresh_pending(self, out: Outcome) -> None:
        if out.dry_run or out.failure_kind in ("locked", "repository"):
            return
        from patch.pending import look, write_state

        try:
            write_state(self.env.state_dir, look(self.dnf, self.clock()))
        except (DnfError, OSError) as e:
            out.notes.append(f"pending updates not recounted: {e}")
