"""The shared machinery of the SMTP, IMAP and POP3 probes: options, a bounded line
conversation over a raw socket, the transcript of findings, and the probe dialogue
(greeting, capabilities, STARTTLS or implicit TLS, certificate) that each protocol
fills in with its own words."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import ssl
import time
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from agent.config.schema import (
    RANGE,
    TEXT,
    UNIT_OR_NONE,
    CheckOptions,
    listing,
    number,
    option,
    string,
    table,
)
from agent.env import Env
from agent.model import Check, Metric, Result, Status
from agent.ranges import Range, judge
from agent.system.listeners import port_owner
from agent.system.systemd import unit_name
from checks.ports import split_target
from checks.services import watched_units
from checks.tlsinfo import (
    EXPIRY_CRIT,
    EXPIRY_WARN,
    Finding,
    cert_info,
    context,
    handshake,
    judge_cert,
    restartable,
    summarize,
)

MAX_LINE = 8192  # longer than any sane reply line; stops a babbling peer filling memory
MAX_LINES = 200


class ProtocolError(Exception):
    """The server said something other than what the protocol expects at this point."""






TARGET = string('"host:port"', split_target)
TARGETS = listing(string('"host:port" or "[ipv6]:port"', split_target))
UNIT_LINKS = table(TARGET, UNIT_OR_NONE)


def is_local(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ProbeOptions(CheckOptions):
    """Keys shared by the smtp, imap and pop3 checks."""
    interval: float = option(60.0, number(1, 86400), "seconds between runs under steward run "
                             "(a TLS handshake each minute is plenty)")

    targets: tuple[str, ...] | None = option(
        None, TARGETS, "the service's default port on localhost when its unit runs here")
    modes: Mapping[str, str] | None = option(
        None, table(TARGET, TEXT),
        "by port: implicit TLS on the TLS ports (465, 993, 995), STARTTLS elsewhere")
    unit: str = option("", TEXT, "the unit that serves local (loopback) targets")
    units: Mapping[str, str] | None = option(
        None, UNIT_LINKS, "local targets are linked to `unit`; others to none. A linked "
        "target failing while its unit runs gets the unit restarted")
    ca_file: str | None = option(None, TEXT, "the system CAs verify the certificate chain")
    tls_hostname: str | None = option(
        None, TEXT, "the target's host (the host name when targets were discovered): the "
        "name the certificate must carry, also sent as SNI")
    expiry_warn: Range | None = option(EXPIRY_WARN, RANGE, "certificate days left")
    expiry_crit: Range | None = option(EXPIRY_CRIT, RANGE, "certificate days left")
    warn: Range | None = option(None, RANGE, "greeting time, seconds")
    crit: Range | None = option(None, RANGE, "greeting time, seconds")
    connect_timeout: float = option(5.0, number(0.01, 600),
                                    "seconds to wait for the connection and each reply")
    timeout: float = option(20.0, number(0.1, 3600), "seconds before the check is UNKNOWN")



class Conversation:
    """A line-oriented dialogue on one socket; every read is bounded in time and size."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode("ascii") + b"\r\n")

    def readline(self) -> str:
        while b"\n" not in self.buf:
            if len(self.buf) > MAX_LINE:
                raise ProtocolError(f"reply line longer than {MAX_LINE} bytes")
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ProtocolError("the server closed the connection"
                                    + (f" after {self._show(self.buf)!r}" if self.buf else ""))
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return self._show(line.rstrip(b"\r"))

    @staticmethod
    def _show(raw: bytes) -> str:
        return raw.decode("utf-8", errors="replace")

    def start_tls(self, ctx: ssl.SSLContext, name: str) -> Finding | None:
        if self.buf:
            # Bytes after the STARTTLS answer would be read as if they came over TLS.
            return Finding(Status.CRIT, "the server sent data after its STARTTLS answer",
                           "a proxy or the server injects plaintext: investigate")
        tls, failed = handshake(self.sock, ctx, name)
        if tls is not None:
            self.sock = tls
        return failed

    def tls_version(self) -> str:
        return (self.sock.version() or "") if isinstance(self.sock, ssl.SSLSocket) else ""


@dataclass
class Transcript:
    """What a dialogue established, for the judgement."""

    findings: list[Finding] = dataclasses.field(default_factory=list)
    metrics: list[Metric] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    cert: str = ""  # the certificate described, for the details
    stage: str = "connecting"  # where the dialogue is, for a failure's message


class ProbeCheck(Check):
    """The common probe: connect, (implicit TLS,) greeting, capabilities, STARTTLS, the
    certificate, goodbye. Subclasses speak their protocol's words."""

    Options: ClassVar[type[ProbeOptions]]
    options: ProbeOptions
    protocol: ClassVar[str] = ""
    implicit_ports: ClassVar[Mapping[int, str]] = {}  # port -> its implicit TLS mode name
    discovered: ClassVar[tuple[int, ...]] = ()  # ports probed on localhost by default

    # -- configuration -----------------------------------------------------------------

    @classmethod
    def resolve(cls, options: ProbeOptions, env: Env) -> ProbeOptions:
        if options.targets is not None:
            return options
        units = watched_units(env)
        targets = cls.default_targets(env) if options.unit in units else ()
        # The certificate names the machine, not "localhost": judge it by the host name.
        return dataclasses.replace(options, targets=targets,
                                   tls_hostname=options.tls_hostname or socket.getfqdn())

    @classmethod
    def default_targets(cls, env: Env) -> tuple[str, ...]:
        return tuple(f"localhost:{p}" for p in cls.discovered)

    @classmethod
    def instances(cls, options: ProbeOptions, env: Env) -> Iterable[Check]:
        return [cls(options, t) for t in options.targets or ()]

    def mode(self, port: int) -> str:
        configured = (self.options.modes or {}).get(self.target)
        return configured or self.implicit_ports.get(port, "starttls")

    def linked_unit(self, host: str) -> str:
        links = self.options.units or {}
        if self.target in links:
            return links[self.target]
        return self.options.unit if is_local(host) else ""

    # -- the probe -----------------------------------------------------------------------

    def run(self, env: Env) -> Iterable[Result]:
        host, port = split_target(self.target)
        result = self.probe(host, port, env.clock.now())
        unit = self.linked_unit(host)
        if not unit:
            return [result]
        linked = dataclasses.replace(result, unit=unit, depends_on=(f"service:{unit}",))
        return [self.held_by(linked, port) if result.status is not Status.OK else linked]

    @staticmethod
    def held_by(result: Result, port: int) -> Result:
        """A failing local target is restarted in the unit whose process holds its port
        (which may not be the unit it is linked to: an instance, an alternative unit such as
        named-chroot, a unit of the administrator's own); the result keeps its id and its
        dependency on the service the administrator knows, and says which unit runs it."""
        owner = port_owner(port)
        if owner is None:
            return result
        linked = unit_name(result.unit)
        why = owner.describe(port)
        if owner.unit.endswith(".service") and owner.unit != linked:
            why += f" (not {linked}): that unit is restarted"
            return dataclasses.replace(result, unit=owner.unit.removesuffix(".service"),
                                       details=f"{result.details}\n{why}".strip("\n"))
        return dataclasses.replace(result, details=f"{result.details}\n{why}".strip("\n"))

    def probe(self, host: str, port: int, now: float) -> Result:
        """``now``: the wall clock time the certificate's days left are counted from."""
        o = self.options
        mode = self.mode(port)
        t = Transcript()
        try:
            t0 = time.monotonic()
            sock = socket.create_connection((host, port), timeout=o.connect_timeout)
        except socket.gaierror as e:
            return self.result(Status.CRIT, f"cannot resolve {host}: {e.strerror}",
                               remedy=f"check the name, /etc/hosts and the resolver for {host}")
        except OSError as e:
            why = f"no answer within {o.connect_timeout:g} s" if isinstance(
                e, socket.timeout) else f"cannot connect: {e.strerror or e}"
            return self.result(Status.CRIT, why,
                               remedy=f"is the service listening? ss -ltnp 'sport = :{port}'")
        conv = Conversation(sock)
        try:
            self.dialogue(conv, t, mode, port, name=o.tls_hostname or host, t0=t0, now=now)
        except socket.timeout:
            t.findings.append(Finding(
                Status.CRIT, f"no answer within {o.connect_timeout:g} s during {t.stage}",
                f"the {self.protocol.upper()} service on port {port} hangs: check its log",
                unresponsive=True))
        except (ProtocolError, OSError) as e:
            t.findings.append(Finding(Status.CRIT, f"{t.stage}: {e}",
                                      f"check the {self.protocol.upper()} service's log",
                                      unresponsive=True))
        finally:
            conv.sock.close()
        return self.judged(t, mode)

    def dialogue(self, conv: Conversation, t: Transcript, mode: str, port: int, *, name: str,
                 t0: float, now: float) -> None:
        """Speak the protocol up to the goodbye, noting findings in ``t``; a finding that
        ends the dialogue early (no TLS to be had) returns."""
        o = self.options
        ctx = context(o.ca_file)
        if mode in self.implicit_ports.values():
            t.stage = "the TLS handshake"
            if not self._tls(conv, t, ctx, name, "implicit TLS"):
                return
        t.stage = "the greeting"
        self.greet(conv, t, t0)
        t.stage = "the capabilities"
        caps = self.capabilities(conv, t, "before")
        if mode == "starttls":
            if not self.offers_starttls(caps):
                t.findings.append(self.starttls_missing(port))
                return
            t.stage = "STARTTLS"
            self.request_tls(conv)
            if not self._tls(conv, t, ctx, name, "STARTTLS negotiated"):
                return
            t.stage = "the capabilities after STARTTLS"
            self.capabilities(conv, t, "after")
        if isinstance(conv.sock, ssl.SSLSocket):
            info = cert_info(conv.sock)
            t.cert = info.describe()
            findings, metric = judge_cert(info, name, o.expiry_warn, o.expiry_crit, now=now)
            t.findings.extend(findings)
            t.metrics.append(metric)
        t.stage = "the goodbye"
        self.goodbye(conv)

    @staticmethod
    def _tls(conv: Conversation, t: Transcript, ctx: ssl.SSLContext, name: str, how: str
             ) -> bool:
        """TLS on ``conv``, verified for ``name``: noted (``how`` and the version), or its
        failure a finding (False: the dialogue ends)."""
        failed = conv.start_tls(ctx, name)
        if failed:
            t.findings.append(failed)
            return False
        t.notes.append(f"{how} ({conv.tls_version()})")
        return True

    def judged(self, t: Transcript, mode: str) -> Result:
        status, summary, remedy = summarize(
            t.findings, lambda: "; ".join([*t.notes, *(f.text for f in t.findings)])
            or f"{self.protocol.upper()} answers")
        details = "\n".join([f"mode: {mode}", *t.notes,
                             *(f"{f.status.name}: {f.text}" for f in t.findings),
                             *([t.cert] if t.cert else [])])
        return self.result(status, summary, details=details, remedy=remedy,
                           metrics=tuple(t.metrics), restartable=restartable(t.findings))

    def timed(self, t: Transcript, metric: str, since: float) -> None:
        took = round(time.monotonic() - since, 6)
        if metric != self.greeting_metric:
            t.metrics.append(Metric(metric, took, "s", min=0))
            return
        o = self.options
        status = Status(judge(took, o.warn, o.crit))
        t.metrics.append(Metric(metric, took, "s", o.warn.text if o.warn else "",
                                o.crit.text if o.crit else "", 0))
        t.notes.insert(0, f"{self.greeting_word} in {took * 1000:.1f} ms")
        if status is not Status.OK:
            t.findings.append(Finding(status, f"{self.greeting_word} took {took * 1000:.0f} ms",
                                      "the server is slow: check its load and its DNS lookups"))

    greeting_metric: ClassVar[str] = "greeting_time"
    greeting_word: ClassVar[str] = "greeting"

    def starttls_missing(self, port: int) -> Finding:
        return Finding(Status.CRIT, "STARTTLS not offered",
                       f"enable TLS in the {self.protocol.upper()} service (its certificate "
                       "and key), or set this target's mode if plaintext is intended")

    # -- protocol words, per subclass -------------------------------------------------------

    @abstractmethod
    def greet(self, conv: Conversation, t: Transcript, since: float) -> None:
        """Protocol-specific."""

    @abstractmethod
    def capabilities(self, conv: Conversation, t: Transcript, when: str) -> set[str]:
        """Protocol-specific."""

    def offers_starttls(self, caps: set[str]) -> bool:
        return "STARTTLS" in caps

    @abstractmethod
    def request_tls(self, conv: Conversation) -> None:
        """Protocol-specific."""

    @abstractmethod
    def goodbye(self, conv: Conversation) -> None:
        """Protocol-specific."""


def reply_lines(conv: Conversation, done: Any) -> list[str]:
    lines: list[str] = []
    while True:
        line = conv.readline()
        lines.append(line)
        if done(line):
            return lines
        if len(lines) > MAX_LINES:
            raise ProtocolError(f"reply longer than {MAX_LINES} lines")


