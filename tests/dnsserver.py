"""Test helper: Debian's BIND (named) serving test zones on 127.0.0.1:<free port>,
authoritative only (no recursion), started per test module and killed after it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

from tests.netutil import free_port, stop_process

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


def rndc_setup(directory: Path) -> tuple[str, list[str]]:
    """A key made by rndc-confgen and a control channel on a free loopback port: the text
    for named.conf (its ``key`` and ``controls`` statements) and the rndc argv that reaches
    that named."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    key = d / "rndc.key"
    confgen = shutil.which("rndc-confgen", path=f"{os.environ.get('PATH', '')}:{SBIN}")
    subprocess.run([confgen or "rndc-confgen", "-a", "-k", "steward-test", "-c", str(key)],
                   check=True, capture_output=True, timeout=30)
    port = free_port()
    text = (f'include "{key}";\ncontrols {{ inet 127.0.0.1 port {port} allow {{ 127.0.0.1; }} '
            'keys { "steward-test"; }; };\n')
    rndc = shutil.which("rndc", path=f"{os.environ.get('PATH', '')}:{SBIN}") or "rndc"
    return text, [rndc, "-k", str(key), "-s", "127.0.0.1", "-p", str(port)]


def write_named_conf(directory: Path, port: int, options: str, rest: str) -> Path:
    """``directory``/named.conf for a named of its own: files in ``directory``, listening on
    127.0.0.1:``port`` only; ``options`` goes into the options block, ``rest`` after it
    (zones, trust anchors, a ``controls`` statement: none means no control channel)."""
    d = Path(directory)
    conf = d / "named.conf"
    controls = "" if "controls" in rest else "controls { };\n"
    conf.write_text(f"""options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    {options}
}};
{controls}{rest}
""")
    return conf


@contextmanager
def named_process(conf: Path, ready: Callable[[subprocess.Popen[bytes]], bool],
                  startup: float, what: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run named on ``conf`` (log in named.log beside it) until ``ready(proc)`` says it
    serves, within ``startup`` seconds; terminated (then killed) on leaving."""
    binary = named_binary()
    if binary is None:
        raise RuntimeError(named_missing())
    logfile = conf.parent / "named.log"
    user = ["-u", "root"] if os.geteuid() == 0 else []  # -u needs root to switch user
    log = logfile.open("w")
    proc = subprocess.Popen([binary, "-c", str(conf), "-g", *user], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + startup
        while not ready(proc):
            if proc.poll() is not None:
                raise RuntimeError(f"{what}: named exited with {proc.returncode}:\n"
                                   + logfile.read_text(errors="replace")[-3000:])
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: not ready within {startup:g} s:\n"
                                   + logfile.read_text(errors="replace")[-3000:])
            time.sleep(0.1)
        yield proc
    finally:
        stop_process(proc)
        log.close()


@contextmanager
def bind_server(zones: Mapping[str, str], directory: Path,
                startup: float = 20.0, options: str = "", port: int = 0,
                zone_options: Mapping[str, str] | None = None, controls: str = ""
                ) -> Iterator[tuple[str, int]]:
    """Run named for ``zones`` (origin -> zone file text, e.g. from zone_text) with its files
    in ``directory``; yields (host, port) once every zone answers its SOA. ``options`` is
    extra text for named.conf's options block (e.g. ``version "none";``), ``zone_options``
    extra text for a zone's statement (``dnssec-policy default; inline-signing yes;``),
    ``controls`` a control channel (rndc_setup's text); the config is
    ``directory / "named.conf"``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    stanzas = []
    for origin, text in zones.items():
        (d / f"{origin}.zone").write_text(text)
        extra = (zone_options or {}).get(origin, "")
        stanzas.append(f'zone "{origin}" {{ type primary; file "{d}/{origin}.zone"; {extra} }};')
    conf = write_named_conf(d, port, "recursion no;\n    allow-query { any; };\n    "
                            f"dnssec-validation no;\n    {options}",
                            controls + "\n".join(stanzas))
    pending = list(zones)

    def ready(_: subprocess.Popen[bytes]) -> bool:
        while pending:
            try:
                reply = dns.query.udp(dns.message.make_query(pending[0], "SOA"), "127.0.0.1",
                                      timeout=0.5, port=port)
            except (dns.exception.DNSException, OSError):
                return False
            if reply.rcode() != dns.rcode.NOERROR or not reply.answer:
                return False
            pending.pop(0)
        return True

    with named_process(conf, ready, startup, f"named serving {list(zones)}"):
        yield "127.0.0.1", port
