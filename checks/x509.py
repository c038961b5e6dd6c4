"""A PEM certificate's validity and fingerprint, by openssl: shared by the certbot and the
mod_md renewal checks (in a module of its own, so neither imports the other)."""

from __future__ import annotations

import re
import ssl
import subprocess


def x509_dates(pem: str, timeout: float) -> tuple[float, float, str]:
    """(notBefore, notAfter, SHA-256 fingerprint) of a PEM certificate, by openssl."""
    out = subprocess.run(["openssl", "x509", "-noout", "-startdate", "-enddate",
                          "-fingerprint", "-sha256"], input=pem.encode(), capture_output=True,
                         timeout=timeout, check=False).stdout.decode(errors="replace")
    start = re.search(r"notBefore=(.+)", out)
    end = re.search(r"notAfter=(.+)", out)
    fp = re.search(r"Fingerprint=([0-9A-F:]+)", out)
    if not (start and end and fp):
        raise ValueError("not a PEM certificate")
    return (ssl.cert_time_to_seconds(start.group(1).strip()),
            ssl.cert_time_to_seconds(end.group(1).strip()), fp.group(1))
