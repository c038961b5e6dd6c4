"""systemd units of the appliance: running, enabled, not failed or stuck restarting."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent.config.schema import TEXT, CheckOptions, choice, listing, option
from agent.env import Env
from agent.model import Check, Metric, Result, Status
from agent.system.commands import CommandError
from agent.system.systemd import SystemdUnavailable, UnitState, unit_name

# What an EL9 mail/web/DNS appliance may run; the default config watches those present here.
# EL9's names come first; a Debian name (ALIASES) is tried when the EL9 one is not used here.
APPLIANCE_UNITS = ("postfix", "dovecot", "httpd", "named", "named-chroot", "opendkim", "rspamd",
                   "redis", "sshd", "chronyd", "firewalld", "crond", "auditd", "rsyslog",
                   "fail2ban")
ALIASES = {"httpd": ("apache2",), "named": ("bind9",), "redis": ("redis-server",),
           "sshd": ("ssh",), "chronyd": ("chrony",), "crond": ("cron",)}
_EL9_NAME = {alias: el9 for el9, aliases in ALIASES.items() for alias in aliases}


@dataclass(frozen=True)
class ServiceOptions(CheckOptions):
    units: tuple[str, ...] | None = option(
        None, listing(TEXT), "the appliance services enabled or running here are watched")
    missing: str = option("crit", choice("crit", "warn", "skip"),
                          "what a listed unit that does not exist is")


DISCOVERY_TIMEOUT = 5.0  # start-up discovery must not hold up a one-shot check for long


def discover(env: Env, candidates: Sequence[str] = APPLIANCE_UNITS) -> tuple[str, ...]:
    """The candidates that exist here and are enabled or running (installed-but-unused is not
    watched), each under its EL9 name or, where that is not used here, its Debian alias;
    EL9's alternatives (named and named-chroot) are separate candidates, so whichever is
    enabled or running is found. Raises SystemdUnavailable when systemd cannot be asked."""
    groups = [(c, *ALIASES.get(c, ())) for c in candidates]
    flat = [n for g in groups for n in g]
    states = dict(zip(flat, env.systemd.show(flat, timeout=DISCOVERY_TIMEOUT)))
    return pick(groups, states)


def pick(groups: Sequence[Sequence[str]], states: dict[str, UnitState]) -> tuple[str, ...]:
    """Of each group of names for one service (EL9's first), the first one used here
    (exists, and enabled or not inactive); a unit found under two names (Debian's
    sshd.service is an alias of ssh.service) is watched once, under the first."""
    out: list[str] = []
    seen: set[str] = set()
    for group in groups:
        st = next((st for st in (states[n] for n in group)
                   if used_here(st) and st.id not in seen), None)
        if st is not None:
            out.append(st.name)
            seen.add(st.id)
    return tuple(out)


def canonical(name: str) -> str:
    """The EL9 name of a service watched under a Debian alias (``apache2`` -> ``httpd``),
    so what is known about the service (its port, its URL) applies under either name."""
    return _EL9_NAME.get(name, name)


def used_here(st: UnitState) -> bool:
    return st.exists and (st.enabled or st.active_state != "inactive")


def watched_units(env: Env) -> tuple[str, ...]:
    """The services the service check watches, once resolved (the runner resolves the service
    check first, so probes build their default targets on it without asking systemd again);
    none when systemd could not be asked."""
    return getattr(env.config.checks.get("service"), "units", None) or ()


class ServiceCheck(Check):
    name = "service"
    Options = ServiceOptions
    options: ServiceOptions
    resolve_order = 0
    follows_units = True

    def watched_units(self) -> Iterable[str]:
        return self.options.units or ()

    @classmethod
    def resolve(cls, options: ServiceOptions, env: Env) -> ServiceOptions:
        if options.units is not None:
            return options
        try:
            return dataclasses.replace(options, units=discover(env))
        except CommandError:
            return options  # run() reports why systemd could not be asked

    def run(self, env: Env) -> Iterable[Result]:
        explicit = self.options.units is not None
        try:
            units = list(dict.fromkeys((self.options.units if explicit else discover(env)) or ()))
            found = {t: env.systemd.instances(t) for t in units if t.endswith("@")}
            names = [u for u in units if not u.endswith("@")] + [
                i.removesuffix(".service") for t in found for i in found[t]]
            states = dict(zip(names, env.systemd.show(names)))
            inner = sorted({m for st in states.values() for m in st.wrapper_of} |
                           {s for st in states.values() if st.active_state == "inactive"
                            for s in st.sockets})
            helpers = {m.id: m for m in env.systemd.show(inner)} if inner else {}
        except SystemdUnavailable as e:
            return [self.result(Status.UNKNOWN, "cannot read unit states: systemd is not "
                                "running here", details=e.stderr_tail,
                                remedy="run steward on a host booted with systemd, or set "
                                "[checks.service] enabled = false")]
        out = []
        for name in units:
            if name.endswith("@"):
                used = [states[i.removesuffix(".service")] for i in found[name]]
                used = [st for st in used if used_here(st)]
                out += [self.judge_one(st, helpers) for st in used] or \
                    self.no_instance(name)
            elif states[name].exists or self.options.missing != "skip":
                out.append(self.judge_one(states[name], helpers))
        return out

    def judge_one(self, st: UnitState, helpers: dict[str, UnitState]) -> Result:
        runs = [helpers[m] for m in st.wrapper_of if m in helpers]
        if runs:
            return self.judge_wrapper(st, runs)
        sockets = [helpers[s] for s in st.sockets if s in helpers]
        if st.active_state == "inactive" and sockets and st.load_state == "loaded":
            return self.judge_socket(st, sockets)
        return self.judge(st)

    def no_instance(self, template: str) -> list[Result]:
        if self.options.missing == "skip":
            return []
        bad = Status.CRIT if self.options.missing == "crit" else Status.WARN
        unit = f"{template}.service"
        return [self.result(bad, f"no instance of {unit} is running or enabled",
                            target=template, remedy=f"systemctl enable --now {template}NAME; "
                            f"see systemctl list-units --all '{template}*'")]

    def judge_socket(self, u: UnitState, sockets: Sequence[UnitState]) -> Result:
        """A socket-activated service (its .socket listens, systemd starts it on the first
        connection): inactive is fine while a socket of it listens; the socket is what is
        restarted when it failed."""
        fixed = {"details": "\n".join(_describe(x) for x in (u, *sockets)),
                 "metrics": (Metric("restarts", u.n_restarts, "c", min=0),)}
        bad = [s for s in sockets if s.active_state != "active"]
        if bad:
            s = bad[0]
            what = f"failed ({s.result})" if s.active_state == "failed" else \
                f"{s.active_state} ({s.sub_state})"
            remedy = f"journalctl -u {s.id} -b -n 50; then systemctl restart {s.id}" if \
                s.active_state == "failed" else f"systemctl enable --now {s.id}"
            return self.result(Status.CRIT, f"inactive and its socket {s.id} is {what}: "
                               "nothing starts it", target=u.name, unit=s.id, remedy=remedy,
                               **fixed)
        s = sockets[0]
        if not s.enabled:
            return self.result(Status.WARN, f"started on demand by {s.id}, which is "
                               f"{s.unit_file_state or 'not enabled'}: it will not listen "
                               "after boot", target=u.name, unit=s.id,
                               remedy=f"systemctl enable {s.id}", **fixed)
        return self.result(Status.OK, f"inactive, started on demand by {s.id} "
                           f"({s.sub_state})", target=u.name, unit=s.id, **fixed)

    def judge_wrapper(self, wrapper: UnitState, members: Sequence[UnitState]) -> Result:
        """A wrapper is as good as the worst unit it wraps; the result keeps the wrapper's
        name (what the administrator knows) and links the member that runs the daemon (what
        steward watches and restarts). Members count as enabled when the wrapper is: they
        start with it."""
        judged = [self.judge(dataclasses.replace(m, name=m.id.removesuffix(".service"),
                                                 unit_file_state=wrapper.unit_file_state))
                  for m in members]
        worst = max(range(len(judged)), key=lambda i: judged[i].status.severity)
        r, m = judged[worst], members[worst]
        return dataclasses.replace(
            r, check=f"service:{wrapper.name}", summary=f"{r.summary} in {m.id}",
            details=f"{_describe(wrapper)}\n" + "\n".join(x.details for x in judged))

    def judge(self, u: UnitState) -> Result:
        journal = f"journalctl -u {u.id} -b -n 50"
        restarts = (Metric("restarts", u.n_restarts, "c", min=0),)
        # No unit on masked or broken units: restarting them cannot help.
        fixed = {"metrics": restarts, "details": _describe(u)}
        common = {**fixed, "unit": u.name}
        if not u.exists:
            bad = Status.CRIT if self.options.missing == "crit" else Status.WARN
            return self.result(bad, f"unit {unit_name(u.name)} not found", target=u.name,
                               details=_describe(u),
                               remedy="install the package that provides it, or remove it "
                               "from [checks.service] units")
        if u.load_state == "masked" or u.unit_file_state == "masked":
            return self.result(Status.CRIT, "masked: it cannot be started", target=u.name,
                               remedy=f"systemctl unmask {u.id} && systemctl enable --now {u.id}",
                               **fixed)
        if u.load_state != "loaded":
            return self.result(Status.CRIT, f"unit file cannot be loaded ({u.load_state})",
                               target=u.name, remedy=f"systemd-analyze verify {u.id}", **fixed)
        state, sub = u.active_state, u.sub_state
        more = f", {u.n_restarts} restarts" if u.n_restarts else ""
        if state in ("active", "reloading"):
            if not u.enabled:
                return self.result(Status.WARN, f"running but {u.unit_file_state or 'not enabled'}"
                                   ": it will not start at boot", target=u.name,
                                   remedy=f"systemctl enable {u.id}", **common)
            return self.result(Status.OK, f"{state} ({sub}){more}", target=u.name, **common)
        if state == "activating" and sub == "auto-restart":
            return self.result(Status.WARN, f"systemd is restarting it after a failure "
                               f"({u.result}){more}", target=u.name,
                               remedy=f"see why it keeps failing: {journal}", **common)
        if state in ("activating", "deactivating"):
            return self.result(Status.WARN, f"{state} ({sub})", target=u.name, **common)
        if state == "failed":
            return self.result(Status.CRIT, f"failed ({u.result}){more}", target=u.name,
                               remedy=f"{journal}; then systemctl restart {u.id}", **common)
        why = "enabled but not running" if u.enabled else f"not running ({u.unit_file_state})"
        return self.result(Status.CRIT, f"{why} ({state}/{sub})", target=u.name,
                           remedy=f"systemctl enable --now {u.id}", **common)


def _describe(u: UnitState) -> str:
    return (f"{u.id}: LoadState={u.load_state} ActiveState={u.active_state} "
            f"SubState={u.sub_state} Result={u.result} NRestarts={u.n_restarts} "
            f"UnitFileState={u.unit_file_state}")
