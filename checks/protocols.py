"""SMTP, IMAP and POP3 probes: the greeting, the capability exchange, STARTTLS offered and
negotiated (or implicit TLS), and the server certificate (chain, name, days left).

One instance per target, each linked to the systemd unit that serves it, so a probe failing
while the unit runs gets the unit restarted. The dialogue is spoken over a raw socket rather
than smtplib/imaplib/poplib so that the TLS server name, every timeout and the check that no
plaintext was pipelined behind a STARTTLS answer (the STARTTLS injection flaw) are ours.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.config.schema import (
    TEXT,
    choice,
    option,
    table,
)
from agent.env import Env
from agent.system.commands import CommandError
from checks.probe import (
    TARGET,
    Conversation,
    ProbeCheck,
    ProbeOptions,
    ProtocolError,
    Transcript,
    reply_lines,
)
from checks.tlsinfo import Finding


@dataclass(frozen=True)
class SmtpOptions(ProbeOptions):
    unit: str = option("postfix", TEXT, "the unit that serves local (loopback) targets")
    modes: Mapping[str, str] | None = option(
        None, table(TARGET, choice("plain", "starttls", "smtps")),
        "465 is smtps, others starttls (on port 25 a missing STARTTLS is CRIT)")


@dataclass(frozen=True)
class ImapOptions(ProbeOptions):
    unit: str = option("dovecot", TEXT, "the unit that serves local (loopback) targets")
    modes: Mapping[str, str] | None = option(
        None, table(TARGET, choice("plain", "starttls", "imaps")),
        "993 is imaps, others starttls")


@dataclass(frozen=True)
class Pop3Options(ProbeOptions):
    unit: str = option("dovecot", TEXT, "the unit that serves local (loopback) targets")
    modes: Mapping[str, str] | None = option(
        None, table(TARGET, choice("plain", "starttls", "pop3s")),
        "995 is pop3s, others starttls")



class SmtpCheck(ProbeCheck):
    name = "smtp"
    protocol = "smtp"
    Options = SmtpOptions
    implicit_ports = {465: "smtps"}
    discovered = (25,)
    greeting_metric = "banner_time"
    greeting_word = "banner"

    @staticmethod
    def reply(conv: Conversation) -> tuple[int, list[str]]:
        lines = reply_lines(conv, lambda s: len(s) < 4 or s[3] != "-")
        code = lines[-1][:3]
        if not code.isdigit():
            raise ProtocolError(f"not an SMTP reply: {lines[-1][:80]!r}")
        return int(code), [s[4:] for s in lines]

    def expect(self, conv: Conversation, code: int, what: str) -> list[str]:
        got, text = self.reply(conv)
        if got != code:
            raise ProtocolError(f"{what} answered {got} {' '.join(text)[:120]}")
        return text

    def greet(self, conv: Conversation, t: Transcript, since: float) -> None:
        self.expect(conv, 220, "the banner")
        self.timed(t, "banner_time", since)

    def capabilities(self, conv: Conversation, t: Transcript, when: str) -> set[str]:
        t0 = time.monotonic()
        conv.send(f"EHLO {_helo_name()}")
        text = self.expect(conv, 250, "EHLO")
        if when == "before":
            self.timed(t, "ehlo_time", t0)
        return {line.split(" ")[0].upper() for line in text[1:]}

    def request_tls(self, conv: Conversation) -> None:
        conv.send("STARTTLS")
        self.expect(conv, 220, "STARTTLS")

    def starttls_missing(self, port: int) -> Finding:
        found = super().starttls_missing(port)
        if port == 25:
            # The seed appliance chose TLS levels for its MX: peers that require TLS would
            # stop delivering here.
            return dataclasses.replace(found, text="STARTTLS not offered on port 25 "
                                       "(peers requiring TLS cannot deliver)",
                                       remedy="set smtpd_tls_security_level = may with "
                                       "smtpd_tls_cert_file/smtpd_tls_key_file in main.cf")
        if port == 587:
            return dataclasses.replace(found, remedy="submission must offer STARTTLS: "
                                       "-o smtpd_tls_security_level=encrypt in master.cf")
        return found

    def goodbye(self, conv: Conversation) -> None:
        conv.send("QUIT")
        self.reply(conv)  # 221; a server that closes at once is fine too


def _helo_name() -> str:
    name = socket.getfqdn()
    return name if "." in name else "steward.invalid"


class ImapCheck(ProbeCheck):
    name = "imap"
    protocol = "imap"
    Options = ImapOptions
    implicit_ports = {993: "imaps"}
    discovered = (993,)

    def __init__(self, options: Any, target: str = "") -> None:
        super().__init__(options, target)
        self.tag = 0

    def command(self, conv: Conversation, text: str) -> list[str]:
        self.tag += 1
        tag = f"s{self.tag}"
        conv.send(f"{tag} {text}")
        lines = reply_lines(conv, lambda s: s.startswith(tag + " "))
        status = lines[-1][len(tag) + 1:]
        if not status.upper().startswith("OK"):
            raise ProtocolError(f"{text.split(maxsplit=1)[0]} answered {status[:120]}")
        return lines[:-1]

    def greet(self, conv: Conversation, t: Transcript, since: float) -> None:
        line = conv.readline()
        if not line.upper().startswith(("* OK", "* PREAUTH")):
            raise ProtocolError(f"greeting is {line[:120]!r}, not * OK")
        self.timed(t, "greeting_time", since)

    def capabilities(self, conv: Conversation, t: Transcript, when: str) -> set[str]:
        t0 = time.monotonic()
        caps: set[str] = set()
        for line in self.command(conv, "CAPABILITY"):
            if line.upper().startswith("* CAPABILITY "):
                caps.update(w.upper() for w in line.split()[2:])
        if when == "before":
            self.timed(t, "capability_time", t0)
        return caps

    def request_tls(self, conv: Conversation) -> None:
        self.command(conv, "STARTTLS")

    def goodbye(self, conv: Conversation) -> None:
        self.command(conv, "LOGOUT")


class Pop3Check(ProbeCheck):
    name = "pop3"
    protocol = "pop3"
    Options = Pop3Options
    implicit_ports = {995: "pop3s"}
    discovered = (995,)

    @staticmethod
    def status(conv: Conversation, what: str) -> str:
        line = conv.readline()
        if not line.startswith("+OK"):
            raise ProtocolError(f"{what} answered {line[:120]!r}")
        return line

    def greet(self, conv: Conversation, t: Transcript, since: float) -> None:
        self.status(conv, "the greeting")
        self.timed(t, "greeting_time", since)

    def capabilities(self, conv: Conversation, t: Transcript, when: str) -> set[str]:
        t0 = time.monotonic()
        conv.send("CAPA")
        self.status(conv, "CAPA")
        lines = reply_lines(conv, lambda s: s == ".")
        if when == "before":
            self.timed(t, "capability_time", t0)
        return {s.split(" ")[0].upper() for s in lines[:-1] if s}

    def offers_starttls(self, caps: set[str]) -> bool:
        return "STLS" in caps

    def request_tls(self, conv: Conversation) -> None:
        conv.send("STLS")
        self.status(conv, "STLS")

    def goodbye(self, conv: Conversation) -> None:
        conv.send("QUIT")
        self.status(conv, "QUIT")

    @classmethod
    def default_targets(cls, env: Env) -> tuple[str, ...]:
        # Dovecot serves POP3 only when its effective configuration says so.
        try:
            protocols = env.commands.run(["doveconf", "-h", "protocols"], timeout=5).stdout
        except CommandError:
            return ()
        return super().default_targets(env) if "pop3" in protocols.split() else ()

