"""Test helper: a real SMTP server (aiosmtpd) on 127.0.0.1, plain / STARTTLS / implicit TLS,
optionally with AUTH, plus a throwaway CA made with the openssl CLI to give it a certificate."""

from __future__ import annotations

import email
import email.message
import email.policy
import secrets
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.netutil import free_port


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def make_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A fresh CA and a server certificate from it for localhost/127.0.0.1/::1, with the
    extensions Python's strict verification (VERIFY_X509_STRICT, 3.13+) wants.
    Returns (ca_pem, cert_pem, key_pem)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")  # fast to generate
    # The CA's extensions come from a config of our own: OpenSSL 1.1.1 (bullseye) adds -addext
    # extensions beside the system openssl.cnf's v3_ca ones, and a CA certificate with two
    # basicConstraints is rejected ("unable to get local issuer certificate"); 3.0 replaces.
    (d / "ca.cnf").write_text(
        "[req]\ndistinguished_name = dn\nx509_extensions = v3_ca\n[dn]\n"
        "[v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n")
    _openssl("req", "-x509", "-config", d / "ca.cnf", *ec, "-keyout", d / "ca.key",
             "-out", d / "ca.pem", "-days", "2",
             "-subj", f"/CN=steward test CA {secrets.token_hex(4)}")
    _openssl("req", *ec, "-keyout", d / "key.pem", "-out", d / "server.csr",
             "-subj", "/CN=localhost")
    (d / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n")
    _openssl("x509", "-req", "-in", d / "server.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
             "-set_serial", str(secrets.randbits(63)), "-days", "2", "-extfile", d / "server.ext",
             "-out", d / "cert.pem")
    return d / "ca.pem", d / "cert.pem", d / "key.pem"


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool              # the session was encrypted (STARTTLS done, or implicit TLS)
    login: str | None      # the user that authenticated, if any


class _Handler:
    def __init__(self, spool: Path, refuse: frozenset[str]) -> None:
        self.spool = spool
        self.refuse = refuse
        self.received: list[Received] = []
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        tls = server.transport.get_extra_info("ssl_object") is not None
        login = session.auth_data.login.decode() if session.authenticated else None
        with self.lock:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                          envelope.original_content, tls, login))
            (self.spool / f"{len(self.received):04d}.eml").write_bytes(envelope.original_content)
        return "250 2.0.0 Ok: queued"


class MailServer:
    """``with MailServer(tmp_path, mode="starttls", cert=..., key=...) as srv:`` — a running
    server on 127.0.0.1:srv.port; srv.messages() is what it accepted, parsed.

    mode: "plain" (no TLS offered), "starttls" (STARTTLS offered; required before MAIL unless
    require_starttls=False) or "smtps" (implicit TLS). auth: {"user": "password"} offers AUTH
    PLAIN/LOGIN and requires it before MAIL. refuse: recipient addresses answered with 550."""

    def __init__(self, maildir_parent: Path, *, mode: str = "plain", cert: Path | None = None,
                 key: Path | None = None, auth: dict[str, str] | None = None, port: int = 0,
                 require_starttls: bool = True, auth_require_tls: bool = True,
                 refuse: tuple[str, ...] = (), host: str = "127.0.0.1") -> None:
        if mode not in ("plain", "starttls", "smtps"):
            raise ValueError(f"mode {mode!r}")
        spool = Path(maildir_parent) / f"mail-{secrets.token_hex(4)}"
        spool.mkdir(parents=True)
        self.handler = _Handler(spool, frozenset(refuse))
        kwargs: dict[str, Any] = {}
        if mode != "plain":
            if cert is None or key is None:
                raise ValueError(f"mode {mode!r} needs cert and key")
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(cert, key)
            if mode == "starttls":
                kwargs.update(tls_context=tls, require_starttls=require_starttls)
            else:
                kwargs.update(ssl_context=tls)
        if auth is not None:
            kwargs.update(authenticator=self._authenticator(auth), auth_required=True,
                          # aiosmtpd only counts STARTTLS as TLS: on implicit TLS it would
                          # neither offer AUTH nor accept it, so do not ask it to require TLS.
                          auth_require_tls=auth_require_tls and mode != "smtps")
        if port == 0:
            port = free_port()  # aiosmtpd's Controller has no "any port" (0 breaks its self-test)
        self.port = port
        self._controller: Controller | None = Controller(
            self.handler, hostname=host, port=port, ready_timeout=10,
            server_hostname="mx.test", **kwargs)
        self._controller.start()

    @staticmethod
    def _authenticator(users: dict[str, str]) -> Any:
        def check(server: Any, session: Any, envelope: Any, mechanism: str,
                  auth_data: Any) -> AuthResult:
            ok = (isinstance(auth_data, LoginPassword)
                  and users.get(auth_data.login.decode()) == auth_data.password.decode())
            return AuthResult(success=ok, handled=False, auth_data=auth_data)
        return check

    @property
    def received(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.received)

    def messages(self) -> list[email.message.EmailMessage]:
        """Parsed as a mailbox would store them: wire CRLF turned into LF (the email package
        would otherwise leave a \r at the end of every decoded text line)."""
        return [email.message_from_bytes(r.content.replace(b"\r\n", b"\n"),
                                         policy=email.policy.default)
                for r in self.received]

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> MailServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
