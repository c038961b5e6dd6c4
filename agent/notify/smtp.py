"""Mail delivery for steward: an ordered list of SMTP relays, tried in turn until one accepts.

Each relay URL names its transport: ``smtp`` (plaintext, never upgraded behind the user's back),
``smtp+starttls`` (STARTTLS required, no plaintext fallback) or ``smtps`` (implicit TLS). TLS is
always verified, against ``ca_file`` or the system CAs. Failures never raise: every relay tried
yields a RelayResult, so the caller can say exactly why an alert did not leave the box."""

from __future__ import annotations

import contextlib
import email.message
import logging
import os
import smtplib
import socket
import ssl
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent.quote import quote

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}


@dataclass(frozen=True)
class Relay:
    url: str
    scheme: str
    host: str
    port: int


@dataclass(frozen=True)
class RelayResult:
    relay: str
    ok: bool
    detail: str


class _Refused(Exception):
    """A relay we will not use as asked (no STARTTLS, AUTH in clear, unsafe password file)."""


def parse_relay(url: str) -> Relay:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # bad port or unbalanced IPv6 brackets
        raise ValueError(f"relay {quote(url)}: {exc}") from None
    scheme = parts.scheme
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"relay {quote(url)}: scheme must be one of {', '.join(DEFAULT_PORTS)}")
    host = parts.hostname
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"relay {quote(url)}: no host")
    if port == 0:
        raise ValueError(f"relay {quote(url)}: port 0")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"relay {quote(url)}: must not have a path, query or fragment")
    # Credentials in the URL would end up in logs and results; they belong in password_file.
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"relay {quote(url)}: put credentials in username/password_file, "
                         "not the URL")
    return Relay(url, scheme, host, DEFAULT_PORTS[scheme] if port is None else port)


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else reply


def _describe(exc: Exception) -> str:
    # smtplib reports a failed read (a timeout, say) as "Connection unexpectedly closed: ...".
    if isinstance(exc, smtplib.SMTPServerDisconnected) and isinstance(exc.__context__, OSError):
        exc = exc.__context__
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "recipient refused: " + ", ".join(
            f"{rcpt}: {code} {_text(reply)}" for rcpt, (code, reply) in exc.recipients.items())
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{exc.smtp_code} {_text(exc.smtp_error)}"
    # Not str(exc): that would quote a character of the password.
    if isinstance(exc, (UnicodeEncodeError, UnicodeDecodeError)):
        return f"unusable text in password file or address: {exc.reason}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror}"
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, ssl.SSLError):
        return exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return str(exc) or type(exc).__name__


class SmtpSender:
    def __init__(self, relays: Sequence[str], *, username: str | None = None,
                 password_file: str | None = None, ca_file: str | None = None,
                 timeout: float = 30.0, local_hostname: str | None = None) -> None:
        self.relays = [parse_relay(url) for url in relays]
        if not self.relays:
            raise ValueError("no SMTP relay configured")
        if username is not None and password_file is None:
            raise ValueError("SMTP username set but no password_file")
        self.username = username
        self.password_file = password_file
        self.ca_file = ca_file
        self.timeout = timeout
        self.local_hostname = local_hostname

    def send(self, msg: email.message.EmailMessage) -> list[RelayResult]:
        """Try the relays in order until one takes the message; delivered iff results[-1].ok."""
        if not (msg["To"] or msg["Cc"] or msg["Bcc"]):
            raise ValueError("message has no recipients")
        results: list[RelayResult] = []
        for relay in self.relays:
            try:
                detail = self._deliver(relay, msg)
            # ssl.SSLError is an OSError; UnicodeError: smtplib's AUTH only takes ASCII passwords
            except (_Refused, smtplib.SMTPException, OSError, UnicodeError) as exc:
                detail = _describe(exc)
                log.warning("mail relay %s failed: %s", relay.url, detail)
                results.append(RelayResult(relay.url, False, detail))
                continue
            log.info("mail relay %s: %s", relay.url, detail)
            results.append(RelayResult(relay.url, True, detail))
            break
        return results

    def _password(self) -> str:
        assert self.password_file is not None
        # O_NONBLOCK so a FIFO put there cannot hang the sender; fstat the open file, not the path.
        fd = os.open(self.password_file, os.O_RDONLY | os.O_NONBLOCK)
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise _Refused(f"password file {self.password_file} is not a regular file")
            if mode & 0o077:
                raise _Refused(f"refusing a password file others can read: {self.password_file} "
                               f"has mode {stat.S_IMODE(mode):04o} (want 0600)")
            password = os.read(fd, 65536).decode("utf-8").rstrip("\r\n")
        finally:
            os.close(fd)
        if not password:
            raise _Refused(f"password file {self.password_file} is empty")
        return password

    def _deliver(self, relay: Relay, msg: email.message.EmailMessage) -> str:
        if self.username is not None and relay.scheme == "smtp":
            raise _Refused("refusing to send the SMTP password over an unencrypted connection "
                           "(use smtp+starttls:// or smtps://)")
        password = self._password() if self.username is not None else None
        context = ssl.create_default_context(cafile=self.ca_file)  # hostname checked by default
        conn: smtplib.SMTP
        if relay.scheme == "smtps":
            conn = smtplib.SMTP_SSL(relay.host, relay.port, self.local_hostname,
                                    timeout=self.timeout, context=context)
        else:
            conn = smtplib.SMTP(relay.host, relay.port, self.local_hostname, timeout=self.timeout)
        try:
            conn.ehlo()
            if relay.scheme == "smtp+starttls":
                if not conn.has_extn("starttls"):
                    raise _Refused("server does not offer STARTTLS; refusing to send in plaintext")
                conn.starttls(context=context)
                conn.ehlo()
            if self.username is not None and password is not None:
                conn.login(self.username, password)
            refused = conn.send_message(msg)
            # Some recipients were taken: still a failure, so the next relay tries them all;
            # a duplicate for some beats a lost alert for others.
            if refused:
                raise smtplib.SMTPRecipientsRefused(refused)
            # Accepted already: a failed goodbye must not count as a failure and cause a resend.
            with contextlib.suppress(smtplib.SMTPException, OSError):
                conn.quit()
        finally:
            conn.close()
        return "250 accepted"  # smtplib keeps the DATA reply (queue id) to itself
