"""Test helper: Debian's BIND (named) serving test zones on 127.0.0.1:<free port>,
authoritative only (no recursion), started per test module and killed after it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

from tests.netutil import free_port

SBIN = "/usr/sbin:/sbin"


def named_binary() -> str | None:
    return shutil.which("named", path=f"{os.environ.get('PATH', '')}:{SBIN}")


def named_missing() -> str:
    """Why named cannot run here ("" when it can): for pytest.skip."""
    if named_binary() is None:
        return "BIND's named is not installed (apt-get install -y bind9 dnsutils)"
    return ""


def zone_text(origin: str, body: str, ttl: int = 60) -> str:
    """A zone file with a SOA and NS for ``origin`` followed by ``body``."""
    return (f"$ORIGIN {origin}.\n$TTL {ttl}\n"
            f"@ SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 60\n"
            f"@ NS ns.{origin}.\nns A 127.0.0.1\n{body}\n")


def txt(value: str) -> str:
    """A TXT RDATA for ``value``, split into quoted strings of at most 200 characters
    (one character-string holds 255 at most)."""
    chunks = [value[i:i + 200] for i in range(0, len(value), 200)] or [""]
    return "( " + " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"'
                           for c in chunks) + " )"


@contextmanager
def bind_server(zones: Mapping[str, str], directory: Path,
                startup: float = 20.0, options: str = "", port: int = 0
                ) -> Iterator[tuple[str, int]]:
    """Run named for ``zones`` (origin -> zone file text, e.g. from zone_text) with its files
    in ``directory``; yields (host, port) once every zone answers its SOA. ``options`` is
    extra text for named.conf's options block (e.g. ``version "none";``); the config is
    ``directory / "named.conf"``."""
    binary = named_binary()
    if binary is None:
        raise RuntimeError(named_missing())
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    stanzas = []
    for origin, text in zones.items():
        (d / f"{origin}.zone").write_text(text)
        stanzas.append(f'zone "{origin}" {{ type primary; file "{d}/{origin}.zone"; }};')
    conf = d / "named.conf"
    conf.write_text(f"""options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    allow-query {{ any; }};
    dnssec-validation no;
    {options}
}};
controls {{ }};
{chr(10).join(stanzas)}
""")
    user = ["-u", "root"] if os.geteuid() == 0 else []  # -u needs root to switch user
    log = (d / "named.log").open("w")
    proc = subprocess.Popen([binary, "-c", str(conf), "-g", *user], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        _wait(proc, port, list(zones), d / "named.log", startup)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _wait(proc: subprocess.Popen[bytes], port: int, origins: list[str], logfile: Path,
          startup: float) -> None:
    deadline = time.monotonic() + startup
    pending = list(origins)
    while pending:
        if proc.poll() is not None:
            raise RuntimeError(f"named exited with {proc.returncode}:\n"
                               + logfile.read_text(errors="replace")[-3000:])
        if time.monotonic() > deadline:
            raise RuntimeError(f"named did not serve {pending} within {startup:g} s:\n"
                               + logfile.read_text(errors="replace")[-3000:])
        try:
            reply = dns.query.udp(dns.message.make_query(pending[0], "SOA"), "127.0.0.1",
                                  timeout=0.5, port=port)
            if reply.rcode() == dns.rcode.NOERROR and reply.answer:
                pending.pop(0)
                continue
        except (dns.exception.DNSException, OSError):
            pass
        time.sleep(0.1)
