"""systemd adapter: unit state for many units in one ``systemctl show`` call; long work
started as transient units of its own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.system.commands import CommandError, CommandRunner

PROPERTIES = ("Id", "LoadState", "ActiveState", "SubState", "Result", "NRestarts",
              "UnitFileState", "Restart", "ConsistsOf", "TriggeredBy")


class SystemdUnavailable(CommandError):
    """systemctl cannot reach a systemd manager (not booted with systemd, no bus)."""


@dataclass(frozen=True)
class UnitState:
    name: str  # as asked for, e.g. "postfix"
    id: str  # as systemd resolved it, e.g. "postfix.service"
    load_state: str  # loaded, not-found, masked, bad-setting, error
    active_state: str  # active, reloading, inactive, failed, activating, deactivating
    sub_state: str  # running, exited, dead, failed, auto-restart, start...
    result: str  # success, exit-code, signal, core-dump, timeout, start-limit-hit...
    n_restarts: int
    unit_file_state: str  # enabled, disabled, static, masked, "" when not found...
    restart: str = ""  # the unit's Restart= setting: no, always, on-failure... ("" if none)
    consists_of: tuple[str, ...] = ()  # units that are PartOf= this one (postfix@-.service)
    triggered_by: tuple[str, ...] = ()  # units that start it: its .socket, .timer, .path

    @property
    def sockets(self) -> tuple[str, ...]:
        """The socket units that start this service on demand (socket activation)."""
        return tuple(u for u in self.triggered_by if u.endswith(".socket"))

    @property
    def wrapper_of(self) -> tuple[str, ...]:
        """The services this unit only wraps: it is "active (exited)" (a oneshot that started
        them, as Debian's postfix.service) and services are PartOf= it. Their state, not
        this one's, says whether the daemon runs."""
        if self.active_state != "active" or self.sub_state != "exited":
            return ()
        return tuple(u for u in self.consists_of if u.endswith(".service"))

    @property
    def start_limit_hit(self) -> bool:
        """systemd gave up on it: a unit with Restart= that is failed was stopped by its start
        limit (systemd 252 keeps Result=exit-code then; newer ones say start-limit-hit)."""
        return self.result == "start-limit-hit" or (
            self.active_state == "failed" and self.restart not in ("", "no"))

    @property
    def exists(self) -> bool:
        return self.load_state not in ("not-found", "")

    @property
    def enabled(self) -> bool:
        return self.unit_file_state in ("enabled", "enabled-runtime", "static", "indirect",
                                        "generated", "alias", "linked", "linked-runtime")


def unit_name(name: str) -> str:
    """``postfix`` -> ``postfix.service``; names with a unit suffix are kept."""
    return name if "." in name.rsplit("@", 1)[-1] else f"{name}.service"


class Systemd:
    """Reads unit state through systemctl. ``systemctl`` is the argv prefix to run it with
    (tests point it into a container with nsenter; the appliance uses plain ``systemctl``)."""

    def __init__(self, runner: CommandRunner, systemctl: Sequence[str] = ("systemctl",),
                 timeout: float = 15.0) -> None:
        self._runner = runner
        self._systemctl = tuple(systemctl)
        self._timeout = timeout

    def show(self, units: Sequence[str], timeout: float | None = None) -> list[UnitState]:
        """State of each unit, in the order asked, with one systemctl call."""
        if not units:
            return []
        names = [unit_name(u) for u in units]
        argv = [*self._systemctl, "show", "--no-pager", "--property=" + ",".join(PROPERTIES),
                "--", *names]
        out = self._call(argv, timeout)
        blocks = [b for b in out.strip("\n").split("\n\n") if b.strip()]
        if len(blocks) != len(names):
            raise CommandError(argv, 0, out, f"expected {len(names)} unit blocks, "
                                             f"got {len(blocks)}")
        return [_parse(asked, block) for asked, block in zip(units, blocks)]

    def _call(self, argv: Sequence[str], timeout: float | None) -> str:
        try:
            return self._runner.run(argv, timeout=timeout or self._timeout).stdout
        except CommandError as e:
            if _unavailable(e.stderr_tail):
                raise SystemdUnavailable(e.argv, e.returncode, e.stderr_tail,
                                         "systemd is not reachable") from None
            raise

    def instances(self, template: str, timeout: float | None = None) -> list[str]:
        """The loaded instances of ``template`` (``openvpn-server@``): running, failed or
        enabled and pulled in at boot, as systemd knows them; their unit names."""
        pattern = f"{template}*.service"
        argv = [*self._systemctl, "list-units", "--all", "--plain", "--no-legend",
                "--no-pager", "--type=service", "--", pattern]
        out = self._call(argv, timeout)
        names = [line.split()[0] for line in out.splitlines() if line.strip()]
        return [n for n in names if n.startswith(template) and n.endswith(".service")]

    def _job(self, verb: str, unit: str) -> str:
        """Queue a job without waiting for it (a slow start must not hold up steward's loop);
        its outcome shows in the unit's state. Returns the command as a person would type it."""
        argv = [*self._systemctl, verb, "--no-block", "--", unit_name(unit)]
        self._runner.run(argv, timeout=self._timeout)
        return f"systemctl {verb} {unit_name(unit)}"

    def restart(self, unit: str) -> str:
        return self._job("restart", unit)

    def start(self, unit: str) -> str:
        return self._job("start", unit)

    def reset_failed(self, unit: str) -> str:
        self._runner.run([*self._systemctl, "reset-failed", "--", unit_name(unit)],
                         timeout=self._timeout)
        return f"systemctl reset-failed {unit_name(unit)}"


def active_units(runner: CommandRunner, patterns: Sequence[str],
                 systemctl: Sequence[str] = ("systemctl",)) -> list[str]:
    """Units matching ``patterns`` that are running (a oneshot is "activating" while it runs,
    so "active" alone would miss it)."""
    argv = [*systemctl, "list-units", "--plain", "--no-legend", "--no-pager",
            "--state=active,activating,deactivating,reloading", "--", *patterns]
    out = runner.run(argv, timeout=15).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def run_transient(runner: CommandRunner, unit: str, argv: Sequence[str], *, description: str,
                  timeout_minutes: int, setenv: Mapping[str, str] | None = None,
                  systemd_run: Sequence[str] = ("systemd-run",)) -> str:
    """Start ``argv`` as transient unit ``unit`` outside the caller's cgroup (restarting the
    caller cannot kill it); its full name. Type=oneshot makes TimeoutStartSec bound the whole
    run (for Type=simple it bounds only the fork); --no-block returns once the start is
    queued; --collect unloads the unit when it ends, failed or not."""
    runner.run([*systemd_run, f"--unit={unit}", f"--description={description}",
                "--property=Type=oneshot", f"--property=TimeoutStartSec={timeout_minutes}min",
                "--collect", "--no-block",
                *(f"--setenv={k}={v}" for k, v in (setenv or {}).items()), "--", *argv],
               timeout=30)
    return f"{unit}.service"


def _unavailable(stderr: str) -> bool:
    s = stderr.lower()
    return ("not been booted with systemd" in s or "failed to connect to bus" in s
            or ("connection refused" in s and "systemd" in s))


def _parse(asked: str, block: str) -> UnitState:
    props = dict(line.partition("=")[::2] for line in block.splitlines())
    try:
        restarts = int(props.get("NRestarts", "0") or "0")
    except ValueError:
        restarts = 0
    return UnitState(
        name=asked,
        id=props.get("Id", unit_name(asked)),
        load_state=props.get("LoadState", ""),
        active_state=props.get("ActiveState", ""),
        sub_state=props.get("SubState", ""),
        result=props.get("Result", ""),
        n_restarts=restarts,
        unit_file_state=props.get("UnitFileState", ""),
        restart=props.get("Restart", ""),
        consists_of=tuple(props.get("ConsistsOf", "").split()),
        triggered_by=tuple(props.get("TriggeredBy", "").split()),
    )
