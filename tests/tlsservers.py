"""Test helpers for the TLS probes: certificates with a chosen lifetime from the test CA of
tests/mailserver.py, HTTP(S) servers in a thread, and a real Dovecot (IMAP/POP3, STARTTLS and
implicit TLS) on loopback ports from a throwaway configuration."""

from __future__ import annotations

import http.server
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.mailserver import _openssl, free_port


def issue_cert(ca_pem: Path, days: int, name: str = "localhost",
               sans: str = "DNS:localhost,IP:127.0.0.1,IP:::1") -> tuple[Path, Path]:
    """A server certificate valid for ``days`` from the CA that make_ca() left next to
    ``ca_pem`` (its key is ca.key). Returns (cert_pem, key_pem)."""
    d = ca_pem.parent
    stem = d / f"{name}-{days}d-{secrets.token_hex(3)}"
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl("req", *ec, "-keyout", f"{stem}.key", "-out", f"{stem}.csr", "-subj", f"/CN={name}")
    Path(f"{stem}.ext").write_text(
        f"subjectAltName={sans}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    _openssl("x509", "-req", "-in", f"{stem}.csr", "-CA", ca_pem, "-CAkey", d / "ca.key",
             "-set_serial", str(secrets.randbits(63)), "-days", str(days),
             "-extfile", f"{stem}.ext", "-out", f"{stem}.pem")
    return Path(f"{stem}.pem"), Path(f"{stem}.key")


@dataclass(frozen=True)
class Page:
    status: int = 200
    body: str = "hello from the test server"
    headers: Mapping[str, str] = field(default_factory=dict)


class WebServer:
    """``with WebServer({"/": Page(...)}, cert=, key=) as srv:`` — HTTP, or HTTPS when given
    a certificate, on 127.0.0.1:srv.port; unknown paths are 404."""

    def __init__(self, pages: Mapping[str, Page], cert: Path | None = None,
                 key: Path | None = None) -> None:
        routes = dict(pages)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                page = routes.get(self.path.split("?")[0], Page(404, "not found"))
                body = page.body.encode()
                self.send_response(page.status)
                for k, v in page.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass  # keep pytest output clean

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if cert is not None and key is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cert, key)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port: int = self.httpd.server_address[1]
        self.scheme = "https" if cert else "http"
        self._thread = threading.Thread(target=self.httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def url(self, path: str = "/", host: str = "localhost") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> WebServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


def have_dovecot() -> bool:
    return os.path.exists(DOVECOT) and os.geteuid() == 0


class Dovecot:
    """A real Dovecot with IMAP (STARTTLS), IMAPS, POP3 (STLS) and POP3S on loopback ports,
    from a configuration in ``directory``. Needs root (Dovecot drops privileges to its own
    users for the login processes) and the dovecot-imapd/dovecot-pop3d packages."""

    def __init__(self, directory: Path, cert: Path, key: Path) -> None:
        d = Path(directory)
        for sub in ("run", "state", "mail"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(d / "run", 0o755)  # the unprivileged login processes reach sockets in it
        self.ports = {name: free_port() for name in ("imap", "imaps", "pop3", "pop3s")}
        p = self.ports
        self.conf = d / "dovecot.conf"
        self.conf.write_text(f"""\
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = yes
mail_location = maildir:{d}/mail/%u
passdb {{
  driver = static
  args = password=unused-{secrets.token_hex(8)}
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={d}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {p["imap"]}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {p["imaps"]}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {p["pop3"]}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {p["pop3s"]}
    ssl = yes
  }}
}}
""")
        self.log = d / "dovecot.log"
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.conf)], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            self._wait_ready(10.0)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, within: float) -> None:
        deadline = time.monotonic() + within
        pending = set(self.ports.values())
        while pending:
            if self.proc is not None and self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"dovecot exited {self.proc.returncode}: {err}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"dovecot not listening on {sorted(pending)} "
                                   f"within {within:g} s")
            for port in list(pending):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        pending.discard(port)
                except OSError:
                    pass
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def __enter__(self) -> Dovecot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
