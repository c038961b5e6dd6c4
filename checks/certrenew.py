"""Certificate renewal: certbot's lineages (``/etc/letsencrypt/renewal/*.conf`` and
``live/<name>/cert.pem``) are renewed by something (a systemd timer enabled and active, or a
cron entry that really runs: Debian's ``/etc/cron.d/certbot`` steps aside when systemd runs),
certbot's last renew run (its own log, checks/certbotlog.py) succeeded for each lineage and
is recent, the certificate on disk is not close to expiry (certbot renews 30 days ahead: less
means renewal has been failing), and each service serving a lineage serves the certificate on
disk — a served certificate older than the file is the daemon not reloaded after the
renewal. httpd's mod_md domains are judged from its config and md's store
(checks/mdrenew.py). steward never runs certbot itself: each run would rotate certbot's log."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from agent.env import Env
from agent.model import Check, Result, Status
from agent.system.commands import CommandError
from agent.system.systemd import SystemdUnavailable
from checks.certbase import CertRenewOptions, served_result
from checks.certbase import x509_dates as _x509
from checks.certbotlog import RenewRun, lineage_versions, renew_runs
from checks.mdrenew import md_results

# the timer of Debian's certbot package, of EPEL's (EL9), of the snap; each starts the
# service of the same name
TIMERS = ("certbot.timer", "certbot-renew.timer", "snap.certbot.renew.timer")
CRONS = ("etc/cron.d/certbot", "etc/cron.daily/certbot", "etc/crontab",
         "var/spool/cron/root", "var/spool/cron/crontabs/root")
# Debian's cron line: "test -x /usr/bin/certbot -a \! -d /run/systemd/system && ..."
SYSTEMD_GUARD = re.compile(r"(?:\\?!|\bnot\b)\s*-d\s+/run/systemd/system")


class CertRenewCheck(Check):
    name = "certrenew"
    Options = CertRenewOptions
    options: CertRenewOptions

    def run(self, env: Env) -> Iterable[Result]:
        o = self.options
        base = env.sysroot / o.certbot_dir.lstrip("/")
        confs = sorted((base / "renewal").glob("*.conf"))[:100]
        results = []
        if confs:  # none: certbot not used here
            runs = renew_runs(env.sysroot / o.logs_dir.lstrip("/"), want=3)
            results += [self._renewer(env), self._last_run(env, runs, confs)]
            for conf in confs:
                last = next((r for r in runs if conf.stem in r.outcomes), None)
                results += self._lineage(env, conf.stem, base, last)
        return results + md_results(self, o, env.sysroot / o.httpd_conf.lstrip("/"),
                                    env.sysroot, env.clock.now())

    # --- what runs certbot renew ------------------------------------------------------

    def _timers(self, env: Env) -> tuple[list[Result], list[str]]:
        """Results for the timers that exist (OK: one enabled and active), and notes."""
        notes: list[str] = []
        try:
            if env.sysroot != Path("/"):
                raise SystemdUnavailable([], None, "", "a system tree, not this system")
            states = env.systemd.show(list(TIMERS), timeout=10)
        except CommandError as e:  # not booted with systemd, or a tree: unit files only
            notes.append(f"systemd not asked ({e.reason}): timers judged from their unit "
                         "files")
            return self._timer_files(env), notes
        out = []
        for s in states:
            if not s.exists:
                continue
            what = f"{s.id}: {s.unit_file_state or '?'}, {s.active_state or '?'}"
            notes.append(what)
            if s.unit_file_state == "masked":
                continue
            if s.enabled and s.active_state == "active":
                out.append(self.result(Status.OK, f"certbot renews from {s.id} (enabled, "
                                       "active)", target="renewer", details=what))
            elif s.enabled:
                out.append(self.result(Status.WARN, f"{s.id} is enabled but not active: it "
                                       "fires only after the next boot", target="renewer",
                                       details=what, remedy=f"systemctl start {s.id}"))
            elif s.active_state == "active":
                out.append(self.result(Status.WARN, f"{s.id} is active but not enabled: "
                                       "renewal stops at the next boot", target="renewer",
                                       details=what, remedy=f"systemctl enable {s.id}"))
        return out, notes

    def _timer_files(self, env: Env) -> list[Result]:
        out = []
        for unit in TIMERS:
            argv = ["systemctl", "is-enabled", unit]
            if env.sysroot != Path("/"):
                argv.insert(1, f"--root={env.sysroot}")
            try:
                state = env.commands.run(argv, timeout=10, ok_codes=(0, 1)).stdout.strip()
            except CommandError:
                continue
            if state == "enabled":
                out.append(self.result(Status.OK, f"certbot renews from {unit} (enabled)",
                                       target="renewer", details=f"{unit}: enabled (its unit "
                                       "files; whether it is active was not asked)"))
        return out

    def _renewer(self, env: Env) -> Result:
        timers, notes = self._timers(env)
        ok = [r for r in timers if r.status is Status.OK]
        if ok:
            return ok[0]
        systemd_runs = (env.sysroot / "run/systemd/system").is_dir()
        for cron in CRONS:
            try:
                with (env.sysroot / cron).open("rb") as f:
                    text = f.read(65536).decode("utf-8", errors="replace")
            except OSError:
                continue
            lines = [ln for ln in text.splitlines() if re.match(r"^[^#]*\bcertbot\b.*\brenew\b",
                                                                ln) or
                     (cron.startswith("etc/cron.daily") and re.match(r"^[^#]*certbot", ln))]
            if not lines:
                continue
            if systemd_runs and all(SYSTEMD_GUARD.search(ln) for ln in lines):
                notes.append(f"/{cron} runs certbot only when systemd does not run "
                             "(`! -d /run/systemd/system`): here it does nothing")
                continue
            return self.result(Status.OK, f"certbot renews from /{cron}", target="renewer",
                               details="\n".join([f"/{cron}: {lines[0].strip()[:200]}", *notes]))
        if timers:
            return timers[0]
        return self.result(Status.CRIT, "nothing renews the certbot certificates (no enabled "
                           "and active timer, no cron entry that runs)", target="renewer",
                           details="\n".join([f"looked for: {', '.join(TIMERS)}; "
                                              f"/{', /'.join(CRONS)}", *notes]),
                           remedy="systemctl enable --now certbot-renew.timer (EL9, EPEL) or "
                           "certbot.timer (Debian)")

    # --- what certbot logged --------------------------------------------------------------

    def _last_run(self, env: Env, runs: list[RenewRun], confs: list[Path]) -> Result:
        o = self.options
        logs = f"{o.logs_dir.rstrip('/')}/letsencrypt.log"
        now = env.clock.now()
        if not runs:
            try:
                newest_conf = max(c.stat().st_mtime for c in confs)
            except OSError:
                newest_conf = 0.0
            if now - newest_conf < o.renew_run_hours * 3600:
                return self.result(Status.OK, "no certbot renew run logged yet (the lineages "
                                   "are new)", target="last-run", details=f"looked in {logs}*")
            return self.result(Status.WARN, f"no certbot renew run in {logs} or its "
                               "rotations: the renewer has not run", target="last-run",
                               details=f"looked in {logs}*",
                               remedy="certbot renew -v by hand, then check the timer: "
                               "systemctl list-timers 'certbot*'")
        run = runs[0]
        hours = (now - run.ended) / 3600
        details = [f"{run.path}: run started {run.started}, arguments {run.arguments or '?'}",
                   *(f"{n}: {v}" + (f" ({run.errors[n]})" if n in run.errors else "")
                     for n, v in sorted(run.outcomes.items())[:20])]
        failed = sorted(n for n, v in run.outcomes.items() if v in ("failure", "parsefail"))
        if failed:
            first = run.errors.get(failed[0], "")
            return self.result(Status.WARN, f"certbot's last renew run ({run.started}) failed "
                               f"for {', '.join(failed[:5])}" + (f": {first}" if first else ""),
                               target="last-run", details="\n".join(details),
                               remedy=f"certbot renew --cert-name {failed[0]} -v; the error "
                               f"is in {run.path}")
        if not run.finished:
            return self.result(Status.WARN, f"certbot's last renew run ({run.started}) ended "
                               "without its summary" + (f": {run.last_error}" if run.last_error
                                                        else ""), target="last-run",
                               details="\n".join(details), remedy=f"read {run.path}")
        if hours > o.renew_run_hours:
            return self.result(Status.WARN, f"certbot's last renew run was {hours:.0f} h ago "
                               f"(over {o.renew_run_hours:g}): the renewer does not run",
                               target="last-run", details="\n".join(details),
                               remedy="systemctl list-timers 'certbot*'; journalctl -u "
                               "'certbot*'")
        renewed = sorted(n for n, v in run.outcomes.items() if v == "success")
        return self.result(Status.OK, f"certbot's last renew run ({run.started}, {hours:.0f} h "
                           "ago) succeeded" + (f": renewed {', '.join(renewed[:5])}" if renewed
                                               else ": nothing due"), target="last-run",
                           details="\n".join(details))

    # --- each lineage -------------------------------------------------------------------

    def _lineage(self, env: Env, name: str, base: Path, last: RenewRun | None) -> list[Result]:
        o = self.options
        cert = base / "live" / name / "cert.pem"
        try:
            pem = cert.read_text(errors="replace")[:65536]
            start, end, fp = _x509(pem, o.tls_timeout)
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            return [self.result(Status.CRIT, f"lineage {name}: cannot read {cert}: "
                                f"{getattr(e, 'strerror', None) or e}", target=name,
                                remedy=f"certbot certificates; certbot renew --cert-name {name}")]
        days = (end - env.clock.now()) / 86400
        live, newest = lineage_versions(base, name)
        details = [f"{cert}: from {time.strftime('%Y-%m-%d', time.gmtime(start))} to "
                   f"{time.strftime('%Y-%m-%d', time.gmtime(end))}, SHA-256 {fp[:23]}..."
                   + (f", archive/{name}/cert{live}.pem" if live else "")]
        if last is not None:
            details.append(f"last renew run ({last.started}): {last.outcomes[name]}"
                           + (f": {last.errors[name]}" if name in last.errors else ""))
        if days < o.renew_warn_days:
            status = Status.CRIT if days < o.renew_crit_days else Status.WARN
            why = f": {last.errors[name]}" if last is not None and name in last.errors else ""
            out = [self.result(status, f"lineage {name}: the certificate on disk expires in "
                               f"{days:.0f} days: renewal is failing{why}"[:300], target=name,
                               details="\n".join(details),
                               remedy=f"certbot renew --cert-name {name} -v, fix what it "
                               f"says; see {o.logs_dir.rstrip('/')}/letsencrypt.log")]
        elif live is not None and newest is not None and newest > live:
            out = [self.result(Status.WARN, f"lineage {name}: live/ links to cert{live}.pem "
                               f"but archive/ has cert{newest}.pem: a renewal stopped "
                               "half-way", target=name, details="\n".join(details),
                               remedy=f"certbot update_symlinks, or certbot renew "
                               f"--cert-name {name} --force-renewal")]
        elif last is not None and last.outcomes[name] == "failure":
            out = [self.result(Status.WARN, f"lineage {name}: valid {days:.0f} more days, but "
                               "its last renewal attempt failed"
                               + (f": {last.errors[name]}" if name in last.errors else "")
                               [:300], target=name, details="\n".join(details),
                               remedy=f"certbot renew --cert-name {name} -v")]
        else:
            out = [self.result(Status.OK, f"lineage {name}: valid {days:.0f} more days",
                               target=name, details="\n".join(details))]
        for endpoint in (o.served or {}).get(name, ())[:16]:
            out.append(served_result(self, o, name, endpoint, disk_start=start, disk_fp=fp,
                                     now=env.clock.now()))
        return out
