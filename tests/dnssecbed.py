"""Test helper for DNSSEC: zones signed with BIND's dnssec-keygen/dnssec-signzone, and a second
named on loopback as a validating resolver that forwards to the authoritative test server and
trusts the parent zone's KSK (a static trust anchor)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import dns.flags
import dns.message
import dns.query

from tests.dnsserver import named_process, write_named_conf
from tests.netutil import free_port

ALG = "ECDSAP256SHA256"  # fast to generate and sign


def _run(*argv: str, cwd: Path) -> str:
    return subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True,
                          timeout=60).stdout


def keygen(directory: Path, origin: str, ksk: bool) -> Path:
    """A key for ``origin`` in ``directory``; returns its .key file."""
    flags = ["-f", "KSK"] if ksk else []
    name = _run("dnssec-keygen", "-q", "-a", ALG, *flags, "-K", str(directory), origin,
                cwd=directory).strip()
    return directory / f"{name}.key"


def ds_of(key: Path, origin: str) -> str:
    """The DS record (zone-file line) of a .key file."""
    return _run("dnssec-dsfromkey", "-2", str(key), cwd=key.parent).strip()


def sign(directory: Path, origin: str, text: str, expire: str = "now+2592000") -> str:
    """``text`` (a zone file) signed with a fresh KSK+ZSK kept in ``directory``; signatures end
    at ``expire`` (dnssec-signzone -e syntax). Returns the signed zone file text."""
    d = directory / origin
    d.mkdir(parents=True, exist_ok=True)
    keygen(d, origin, ksk=True)
    keygen(d, origin, ksk=False)
    (d / "zone").write_text(text)
    _run("dnssec-signzone", "-S", "-K", str(d), "-d", str(d), "-o", origin, "-s", "now-3600",
         "-e", expire, "-f", str(d / "zone.signed"), str(d / "zone"), cwd=d)
    return (d / "zone.signed").read_text()


def ksk_anchor(directory: Path, origin: str) -> str:
    """The ``trust-anchors`` line for the KSK made by sign() for ``origin``."""
    for key in sorted((directory / origin).glob("K*.key")):
        rr = next(ln for ln in key.read_text().splitlines() if "DNSKEY" in ln and
              not ln.startswith(";")).split()
        at = rr.index("DNSKEY")
        if rr[at + 1] == "257":
            return f'"{origin}." static-key {" ".join(rr[at + 1:at + 4])} "{"".join(rr[at + 4:])}";'
    raise RuntimeError(f"no KSK for {origin}")


def ds_lines(directory: Path, origin: str) -> str:
    """The DS lines dnssec-signzone -d left for ``origin`` (dsset-<origin>.)."""
    return (directory / origin / f"dsset-{origin}.").read_text()


@contextmanager
def validating_resolver(directory: Path, forward_to: int, zone: str | Sequence[str],
                        anchor: str, startup: float = 20.0, port: int = 0
                        ) -> Iterator[tuple[str, int]]:
    """A recursive, validating named forwarding ``zone`` (or several) to
    127.0.0.1:forward_to and trusting ``anchor`` (a ksk_anchor() line), on ``port`` (0: a
    free one); yields (host, port) once it answers for the first zone."""
    zones = [zone] if isinstance(zone, str) else list(zone)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    conf = write_named_conf(
        d, port, "recursion yes;\n    allow-recursion { 127.0.0.1; };\n    "
        "dnssec-validation yes;", f"trust-anchors {{ {anchor} }};\n" + "".join(
            f'zone "{z}" {{ type forward; forward only; forwarders {{ 127.0.0.1 port '
            f'{forward_to}; }}; }};\n' for z in zones))

    def ready(_: subprocess.Popen[bytes]) -> bool:
        try:
            q = dns.message.make_query(zones[0], "SOA", want_dnssec=True)
            reply = dns.query.udp(q, "127.0.0.1", timeout=0.5, port=port)
        except Exception:  # not listening yet
            return False
        return bool(reply.answer and reply.flags & dns.flags.AD)

    with named_process(conf, ready, startup, "validating named"):
        yield "127.0.0.1", port
