"""DANE for SMTP (RFC 7672): the ``_25._tcp.<mx>`` TLSA records of each MX host compared with
the certificate chain the host serves after STARTTLS. The comparison is OpenSSL's own DANE
verification (``openssl s_client -dane_tlsa_rrdata``: DANE-EE 3 x x against the leaf, DANE-TA
2 x x against the chain with the name checked), so steward judges what a DANE-aware sender
such as Postfix would. A staged renewed certificate, when given, is matched too: a TLSA
record it would not match breaks delivery at the renewal."""

from __future__ import annotations

import hashlib
import re
import shutil
import ssl
import subprocess
from collections.abc import Mapping
from pathlib import Path

from agent.model import Result, Status
from checks.maildns.records import Ctx

MAX_TLSA = 100     # records handed to OpenSSL; more are said and ignored
MAX_HEX = 8192     # a TLSA record's data longer than this (a 4 kB certificate) is refused
OUTPUT_CAP = 256 * 1024


def _der_item(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER item at ``pos``."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if not 0 < n <= 4 or pos + n > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def spki(cert_der: bytes) -> bytes:
    """The SubjectPublicKeyInfo (DER) of an X.509 certificate (RFC 5280 §4.1)."""
    _, start, _ = _der_item(cert_der, 0)          # Certificate
    tag, pos, end = _der_item(cert_der, start)    # tbsCertificate
    if tag != 0x30:
        raise ValueError("not a certificate")
    fields: list[tuple[int, int, int]] = []
    while pos < end and len(fields) < 7:
        t, _s, e = _der_item(cert_der, pos)
        fields.append((t, pos, e))
        pos = e
    if fields and fields[0][0] == 0xA0:           # [0] version
        fields.pop(0)
    if len(fields) < 6 or fields[5][0] != 0x30:
        raise ValueError("no subjectPublicKeyInfo")
    return cert_der[fields[5][1]:fields[5][2]]


def association(cert_der: bytes, selector: int, mtype: int) -> str:
    """The hex TLSA data of ``cert_der`` for (selector, matching type)."""
    data = cert_der if selector == 0 else spki(cert_der)
    if mtype == 1:
        return hashlib.sha256(data).hexdigest()
    if mtype == 2:
        return hashlib.sha512(data).hexdigest()
    return data.hex()


def parse_tlsa(text: str) -> tuple[int, int, int, str] | None:
    parts = text.split()
    if len(parts) < 4 or not all(p.isdigit() and len(p) < 4 for p in parts[:3]):
        return None
    data = "".join(parts[3:]).lower()
    if not re.fullmatch(r"[0-9a-f]+", data) or len(data) > MAX_HEX:
        return None
    return int(parts[0]), int(parts[1]), int(parts[2]), data


def _handshake(address: str, port: int, mx: str, records: list[str], timeout: float
               ) -> tuple[str, str]:
    """(verification line, OpenSSL's output) of a STARTTLS handshake with DANE on."""
    openssl = shutil.which("openssl") or "/usr/bin/openssl"
    target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    argv = [openssl, "s_client", "-starttls", "smtp", "-connect", target, "-servername", mx,
            "-name", mx, "-dane_tlsa_domain", mx, "-showcerts"]
    for r in records:
        argv += ["-dane_tlsa_rrdata", r]
    try:
        proc = subprocess.run(argv, input=b"QUIT\r\n", capture_output=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return "", f"no STARTTLS handshake within {timeout:g} s"
    except OSError as e:
        return "", f"cannot run {openssl}: {e.strerror or e}"
    out = proc.stdout[:OUTPUT_CAP].decode("utf-8", errors="replace")
    err = proc.stderr[:OUTPUT_CAP].decode("utf-8", errors="replace")
    m = re.search(r"^Verify return code: (\d+) \((.*)\)$", out, re.M)
    if "Didn't find STARTTLS" in out + err:
        return "", "no STARTTLS offered after EHLO"
    if not m or "-----BEGIN CERTIFICATE-----" not in out:  # no handshake: no certificate
        err += "\nno certificate served" if m else ""
        lines = [ln for ln in err.splitlines() if ln.strip()]
        return "", (lines[-1][:200] if lines else f"openssl exited {proc.returncode}")
    return m.group(0), out


def _chain(out: str) -> list[bytes]:
    pems = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
    return [ssl.PEM_cert_to_DER_cert(p) for p in pems[:10]]


def dane_rules(ctx: Ctx, port: int, timeout: float, next_certs: Mapping[str, str]
               ) -> list[Result]:
    d = ctx.domain
    mx = ctx.lookup.query(d, "MX")
    if mx.kind == "error":
        return [ctx.result("dane", Status.UNKNOWN, f"MX lookup failed: {mx.error}",
                           remedy="check the resolvers")]
    hosts = [r.split(" ", 1)[1] for r in sorted(mx.records, key=lambda r: int(r.split(" ")[0]))
             if r.split(" ", 1)[1] not in ("", ".")][:10]
    out: list[Result] = []
    without = []
    for host in hosts:
        name = f"_25._tcp.{host}"
        ans = ctx.lookup.query(name, "TLSA")
        if ans.kind == "error":
            out.append(ctx.result(f"dane:{host}", Status.UNKNOWN if not
                                  ans.error.startswith("CNAME loop") else Status.CRIT,
                                  f"TLSA lookup failed: {ans.error}"[:300],
                                  remedy="check the resolvers"))
        elif not ans.records:
            without.append(host)
        else:
            out.append(_host(ctx, host, list(ans.records), port=port, timeout=timeout,
                             next_cert=next_certs.get(host)))
    if not out:
        return [ctx.result("dane", Status.OK, "no TLSA records at any MX host: DANE not used",
                           [f"no TLSA at _25._tcp.{h}" for h in without])]
    if without:
        out.append(ctx.result("dane", Status.WARN, f"TLSA records for some MX hosts only: "
                              f"none at {', '.join(without)}",
                              remedy="publish _25._tcp.<host>. TLSA 3 1 1 <sha256 of the "
                              "key> for " + ", ".join(without)))
    return out


def _host(ctx: Ctx, host: str, texts: list[str], *, port: int, timeout: float,
          next_cert: str | None) -> Result:
    rule = f"dane:{host}"
    name = f"_25._tcp.{host}"
    details = [f"TLSA at {name}: {len(texts)} record(s)"]
    parsed = []
    for t in texts[:MAX_TLSA]:
        p = parse_tlsa(t)
        details.append(f"  {t[:100]}" + ("" if p else "  (malformed: ignored)"))
        if p:
            parsed.append(p)
    if len(texts) > MAX_TLSA:
        details.append(f"  ... {len(texts) - MAX_TLSA} more ignored (over {MAX_TLSA})")
    del details[12:-1]
    usable = [p for p in parsed if p[0] in (2, 3) and p[1] in (0, 1) and p[2] in (0, 1, 2)]
    if not usable:
        return ctx.result(rule, Status.CRIT, f"no usable TLSA record at {name} (SMTP uses "
                          "usage 3 DANE-EE or 2 DANE-TA, RFC 7672 §3.1)", details,
                          remedy=f"publish {name}. TLSA 3 1 1 <sha256 of the server's public "
                          "key>")
    a, aaaa = ctx.lookup.addresses(host)
    addresses = [*a.records, *aaaa.records]
    if not addresses:
        return ctx.result(rule, Status.CRIT, f"{host} has no address to check TLSA against",
                          details, remedy=f"publish {host}. A <address>")
    details.append(_validated(ctx, name))
    records = [f"{u} {s} {m} {h}" for u, s, m, h in usable]
    line, output = _handshake(addresses[0], port, host, records, timeout)
    if not line:
        return ctx.result(rule, Status.CRIT, f"{host} ({addresses[0]}): {output}", details,
                          remedy=f"make {host} offer STARTTLS on port {port}")
    ok = line.startswith("Verify return code: 0 ")
    matched = re.findall(r"^DANE TLSA (\d \d \d) .*?matched (.*)$", output, re.M)
    details.append(f"{host} ({addresses[0]}) after STARTTLS: {line}")
    details += [f"  matched TLSA {m[0]}: {m[1]}" for m in matched[:4]]
    if not ok:
        return ctx.result(rule, Status.CRIT, f"TLSA records of {host} do not match its "
                          f"certificate: {line.split('(', 1)[-1].rstrip(')')}", details,
                          remedy=f"publish {name}. TLSA 3 1 1 "
                          f"{_leaf_hint(output)} (the key {host} serves), "
                          "then delete the stale records once their TTL has passed")
    problems: list[tuple[Status, str, str]] = []
    if any(p[0] == 3 and p[1] == 0 for p in usable):
        problems.append((Status.WARN, "a 3 0 x record pins the whole certificate: it breaks at "
                         "every renewal", f"publish 3 1 1 (the key) at {name} instead of 3 0 x"))
    if next_cert:
        problems += _renewal(next_cert, usable, name)
    else:
        details.append("renewal: no staged certificate given (dane_next_certs): whether these "
                       "records match the next certificate is not checked")
    if not problems:
        return ctx.result(rule, Status.OK, f"DANE: {host} matches TLSA "
                          f"{', '.join(dict.fromkeys(m[0] for m in matched)) or 'records'}",
                          details)
    worst = max((s for s, _, _ in problems), key=lambda s: s.severity)
    return ctx.result(rule, worst, f"{host}: " + "; ".join(p for _, p, _ in problems), details,
                      remedy="; ".join(dict.fromkeys(r for _, _, r in problems)))


def _validated(ctx: Ctx, name: str) -> str:
    import dns.flags

    from checks.maildns.dnssec import ask

    reply = ask(ctx, name, "TLSA")
    if reply is not None and reply.flags & dns.flags.AD:
        return f"{name}: DNSSEC-validated (AD bit)"
    return (f"{name}: not DNSSEC-validated by the resolver (no AD bit): DANE senders use "
            "TLSA records only when they validate (see the dnssec result)")


def _leaf_hint(output: str) -> str:
    chain = _chain(output)
    try:
        return association(chain[0], 1, 1) if chain else "<sha256 of the key>"
    except ValueError:
        return "<sha256 of the key>"


def _renewal(path: str, usable: list[tuple[int, int, int, str]], name: str
             ) -> list[tuple[Status, str, str]]:
    try:
        text = Path(path).read_text(errors="replace")[:OUTPUT_CAP]
        chain = _chain(text)
        if not chain:
            raise ValueError("no PEM certificate in it")
        leaf = chain[0]
        ee = [p for p in usable if p[0] == 3]
        if ee and not any(association(leaf, s, m) == h for _, s, m, h in ee):
            return [(Status.WARN, f"the staged certificate {path} has another key: the TLSA "
                     "3 x x records break at the renewal",
                     f"publish {name}. TLSA 3 1 1 {association(leaf, 1, 1)} beside the current "
                     "record before the renewal")]
    except (OSError, ValueError) as e:
        return [(Status.UNKNOWN, f"cannot read the staged certificate {path}: "
                 f"{getattr(e, 'strerror', None) or e}", "fix dane_next_certs")]
    return []
