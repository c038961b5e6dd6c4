"""Test helper: Debian's OpenDKIM signing for example.test with a key of its own, on a loopback
port or a unix socket, from a throwaway configuration (the one writer of opendkim.conf for the
milter tests, on the host and bind-mounted into a Postfix container)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OPENDKIM = shutil.which("opendkim", path="/usr/sbin:/usr/bin")
DOMAIN, SELECTOR = "example.test", "s1"


def write_conf(d: Path, sock: str, extra: str = "") -> Path:
    """A key for s1._domainkey.example.test, its KeyTable and SigningTable, and
    opendkim.conf listening on ``sock`` (``inet:PORT@127.0.0.1`` or ``local:/path``)."""
    subprocess.run(["opendkim-genkey", "-b", "1024", "-d", DOMAIN, "-s", SELECTOR,
                    "-D", str(d)], check=True, capture_output=True, timeout=60)
    (d / "KeyTable").write_text(f"{SELECTOR}._domainkey.{DOMAIN} {DOMAIN}:{SELECTOR}:"
                                f"{d}/{SELECTOR}.private\n")
    (d / "SigningTable").write_text(f"*@{DOMAIN} {SELECTOR}._domainkey.{DOMAIN}\n")
    conf = d / "opendkim.conf"
    conf.write_text(f"""Syslog no
Mode sv
Socket {sock}
{extra}PidFile {d}/opendkim.pid
KeyTable {d}/KeyTable
SigningTable refile:{d}/SigningTable
Background no
""")
    return conf


def _listening(sock: str) -> bool:
    if sock.startswith("local:"):
        return Path(sock[len("local:"):]).exists()
    port, _, host = sock[len("inet:"):].partition("@")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=0.2).close()
    except OSError:
        return False
    return True


@contextmanager
def opendkim(d: Path, sock: str, extra: str = "", startup: float = 10.0
             ) -> Iterator[subprocess.Popen[bytes]]:
    """Run OpenDKIM from write_conf(d, sock, extra) until it listens; killed on leaving (it
    lingers 5 s on SIGTERM and holds nothing worth a clean stop)."""
    conf = write_conf(d, sock, extra)
    proc = subprocess.Popen([OPENDKIM or "opendkim", "-f", "-x", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + startup
        while not _listening(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait(timeout=10)
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"opendkim did not start: {err}")
            time.sleep(0.05)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
