"""DKIM key records (RFC 6376 §3.6.1): a parser that never raises, and the RSA public numbers
of published and local keys, read with a small DER reader from the standard library (the
appliance's interpreter need not have ``cryptography``)."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from pathlib import Path

from checks.maildns.lookup import Invalid, parsed_or_invalid

_TAG = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
RSA_OID = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1 rsaEncryption


@dataclass(frozen=True)
class DkimRecord:
    tags: dict[str, str]
    key_type: str            # "rsa", "ed25519"
    key: bytes               # decoded p=; empty when revoked
    rsa: tuple[int, int] | None = None   # (modulus, exponent)

    @property
    def revoked(self) -> bool:
        return not self.key

    @property
    def bits(self) -> int:
        return self.rsa[0].bit_length() if self.rsa else 0


def parse_dkim(text: str) -> DkimRecord | Invalid:
    """A parsed record, or Invalid saying what is wrong; never raises."""
    return parsed_or_invalid(_parse, text)


def _parse(text: str) -> DkimRecord | Invalid:
    tags: dict[str, str] = {}
    for i, part in enumerate(p.strip() for p in text.split(";")):
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or not _TAG.match(name):
            return Invalid(f"{part[:40]!r} is not tag=value")
        if name in tags:
            return Invalid(f"tag {name} appears twice")
        if name == "v" and (i != 0 or value.strip() != "DKIM1"):
            return Invalid("v= must come first and be DKIM1")
        tags[name] = value.strip()
    if "p" not in tags:
        return Invalid("p= (the public key) is missing")
    key_type = tags.get("k", "rsa").lower()
    if key_type not in ("rsa", "ed25519"):
        return Invalid(f"k={tags['k']} is not rsa or ed25519")
    b64 = re.sub(r"\s+", "", tags["p"])
    if not b64:
        return DkimRecord(tags, key_type, b"")
    try:
        key = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return Invalid("p= is not base64")
    if key_type == "ed25519":
        if len(key) != 32:
            return Invalid("p= is not a 32-byte Ed25519 key")
        return DkimRecord(tags, key_type, key)
    numbers = rsa_public_numbers(key)
    if numbers is None:
        return Invalid("p= is not a DER RSA SubjectPublicKeyInfo")
    return DkimRecord(tags, key_type, key, numbers)


class _Der:
    """Just enough DER to walk RSA keys: tag, length, contents."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, want: int) -> bytes:
        if self.pos + 2 > len(self.data) or self.data[self.pos] != want:
            raise ValueError("unexpected DER tag")
        length = self.data[self.pos + 1]
        self.pos += 2
        if length & 0x80:
            n = length & 0x7F
            if not 0 < n <= 4 or self.pos + n > len(self.data):
                raise ValueError("bad DER length")
            length = int.from_bytes(self.data[self.pos:self.pos + n], "big")
            self.pos += n
        if self.pos + length > len(self.data):
            raise ValueError("truncated DER")
        out = self.data[self.pos:self.pos + length]
        self.pos += length
        return out

    def integer(self) -> int:
        return int.from_bytes(self.read(0x02), "big", signed=True)


def _pkcs1_public(der: bytes) -> tuple[int, int]:
    seq = _Der(_Der(der).read(0x30))
    return seq.integer(), seq.integer()


def rsa_public_numbers(der: bytes) -> tuple[int, int] | None:
    """(n, e) from a SubjectPublicKeyInfo, or from a bare PKCS#1 RSAPublicKey (which some
    DKIM key generators publish and verifiers accept)."""
    try:
        spki = _Der(_Der(der).read(0x30))
        algo = _Der(spki.read(0x30))
        if algo.read(0x06) != RSA_OID:
            return None
        bits = spki.read(0x03)
        if not bits or bits[0] != 0:
            return None
        return _pkcs1_public(bits[1:])
    except ValueError:
        pass
    try:
        n, e = _pkcs1_public(der)
        return (n, e) if n > 0 and e > 0 else None
    except ValueError:
        return None


def private_key_numbers(pem: str) -> tuple[int, int]:
    """(n, e) of a PEM RSA private key (PKCS#1 or unencrypted PKCS#8); ValueError says why
    not."""
    m = re.search(r"-----BEGIN ([A-Z ]+)-----(.*?)-----END \1-----", pem, re.S)
    if not m:
        raise ValueError("no PEM block")
    label = m.group(1)
    if "ENCRYPTED" in label or "Proc-Type: 4,ENCRYPTED" in m.group(2):
        raise ValueError("the key is encrypted")
    try:
        der = base64.b64decode(re.sub(r"\s+", "", m.group(2)), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the PEM body is not base64") from None
    if label == "PRIVATE KEY":  # PKCS#8: version, algorithm, OCTET STRING(PKCS#1)
        p8 = _Der(_Der(der).read(0x30))
        p8.integer()
        if _Der(p8.read(0x30)).read(0x06) != RSA_OID:
            raise ValueError("not an RSA key")
        der = p8.read(0x04)
    elif label != "RSA PRIVATE KEY":
        raise ValueError(f"{label} is not an RSA private key")
    body = _Der(_Der(der).read(0x30))
    body.integer()  # version
    return body.integer(), body.integer()


ED25519_OID = bytes.fromhex("2b6570")  # 1.3.101.112


def ed25519_public(pem: str, timeout: float = 10.0) -> bytes:
    """The raw 32-byte public key (what DKIM's k=ed25519 p= carries, RFC 8463) of an
    unencrypted PKCS#8 Ed25519 private key; derived by openssl (the curve arithmetic is not
    reimplemented here). ValueError says why not."""
    import subprocess

    m = re.search(r"-----BEGIN PRIVATE KEY-----(.*?)-----END PRIVATE KEY-----", pem, re.S)
    if not m:
        raise ValueError("no PKCS#8 PEM block")
    try:
        der = base64.b64decode(re.sub(r"\s+", "", m.group(1)), validate=True)
        p8 = _Der(_Der(der).read(0x30))
        p8.integer()
        if _Der(p8.read(0x30)).read(0x06) != ED25519_OID:
            raise ValueError("not an Ed25519 key")
    except (binascii.Error, IndexError):
        raise ValueError("the PEM body is not a PKCS#8 key") from None
    try:
        out = subprocess.run(["openssl", "pkey", "-pubout", "-outform", "DER"],
                             input=pem.encode(), capture_output=True, timeout=timeout,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise ValueError(f"openssl pkey could not derive the public key: {e}") from None
    if len(out) != 44:  # SEQ{SEQ{OID}, BIT STRING(0 + 32 bytes)}
        raise ValueError("openssl returned no Ed25519 public key")
    return out[-32:]


def read_keytable(path: Path) -> dict[str, tuple[str, str, str]]:
    """OpenDKIM KeyTable: key name -> (domain, selector, private key path)."""
    out: dict[str, tuple[str, str, str]] = {}
    for raw in path.read_text(errors="replace").splitlines():
        parts = raw.split("#", 1)[0].strip().split(None, 1)
        if len(parts) != 2:
            continue
        fields = parts[1].split(":", 2)
        if len(fields) == 3:
            domain, selector, keyfile = (f.strip() for f in fields)
            out[parts[0]] = (domain.lower(), selector, keyfile)
    return out


def publishable(selector: str, domain: str, numbers: tuple[int, int]) -> str:
    """The TXT record that publishes the public half of a local key."""
    n, e = numbers
    spki = _seq(_seq(_tlv(0x06, RSA_OID) + b"\x05\x00")
                + _tlv(0x03, b"\x00" + _seq(_int(n) + _int(e))))
    p = base64.b64encode(spki).decode()
    return f'{selector}._domainkey.{domain}. TXT "v=DKIM1; k=rsa; p={p}"'


def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _seq(body: bytes) -> bytes:
    return _tlv(0x30, body)


def _int(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))
