"""Web probes: each URL answers with an expected status, quickly enough, with the expected
body; an https URL's certificate verifies, names the host and is not about to expire; and
optionally plain http on the same host redirects to https.

One instance per URL, linked to httpd for local URLs so a failing probe while httpd runs gets it
restarted. requests does the HTTP (verification always on); the certificate's expiry is read on
a separate TLS connection because requests does not expose the peer certificate.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agent.config.schema import (
    BOOLEAN,
    HTTP_URL,
    RANGE,
    REGEX,
    TEXT,
    UNIT_OR_NONE,
    CheckOptions,
    Parser,
    listing,
    number,
    option,
    table,
)
from agent.env import Env
from agent.model import Check, Metric, Result, Status
from agent.ranges import Range, judge
from checks.probe import is_local
from checks.services import canonical, watched_units
from checks.tlsinfo import (
    EXPIRY_CRIT,
    EXPIRY_WARN,
    Finding,
    name_matches,
    probe_certificate,
    restartable,
    summarize,
)

MAX_BODY = 1 << 20  # the regex sees at most the first MiB: enough for a health page
REDIRECTS = (301, 302, 303, 307, 308)




def _statuses(v: Any) -> tuple[int, ...]:
    items = v if isinstance(v, list) else [v]
    if not items or not all(isinstance(x, int) and not isinstance(x, bool) and 100 <= x <= 599
                            for x in items):
        raise ValueError("not an HTTP status or a list of them")
    return tuple(items)





URL = HTTP_URL


@dataclass(frozen=True)
class HttpOptions(CheckOptions):
    interval: float = option(60.0, number(1, 86400), "seconds between runs under steward run "
                             "(a TLS handshake each minute is plenty)")
    urls: tuple[str, ...] | None = option(
        None, listing(URL), "http://localhost/ when httpd runs here")
    expect: tuple[int, ...] = option(
        (200,), Parser(_statuses, "an HTTP status (100-599) or a list of them"),
        "the status after redirects are followed")
    follow_redirects: bool = option(True, BOOLEAN, "judge where redirects lead")
    match: str | None = option(None, REGEX,
                               "the body is not searched (Python re syntax, searched in the "
                               "first MiB)")
    require_https_redirect: bool = option(
        False, BOOLEAN, "for https URLs, http://<host>/ must redirect to https")
    http_port: int = option(80, number(1, 65535, integer=True),
                            "the port of plain http for require_https_redirect")
    warn: Range | None = option(None, RANGE, "response time, seconds")
    crit: Range | None = option(None, RANGE, "response time, seconds")
    ca_file: str | None = option(None, TEXT, "the system CAs verify certificates")
    expiry_warn: Range | None = option(EXPIRY_WARN, RANGE, "certificate days left")
    expiry_crit: Range | None = option(EXPIRY_CRIT, RANGE, "certificate days left")
    unit: str = option("httpd", TEXT, "the unit that serves local (loopback) URLs")
    units: Mapping[str, str] | None = option(
        None, table(URL, UNIT_OR_NONE),
        "local URLs are linked to `unit`, others to none. A linked URL failing while its "
        "unit runs gets the unit restarted")
    request_timeout: float = option(10.0, number(0.01, 600),
                                    "seconds to wait for the connection and for each read")
    timeout: float = option(30.0, number(0.1, 3600), "seconds before the check is UNKNOWN")


class HttpCheck(Check):
    name = "http"
    Options = HttpOptions
    options: HttpOptions

    @classmethod
    def resolve(cls, options: HttpOptions, env: Env) -> HttpOptions:
        if options.urls is not None:
            return options
        # the unit watched for it, under its own name or a Debian alias (apache2 for httpd)
        unit = next((u for u in watched_units(env) if canonical(u) == options.unit), "")
        urls = ("http://localhost/",) if unit else ()
        return dataclasses.replace(options, urls=urls, unit=unit or options.unit)

    @classmethod
    def instances(cls, options: HttpOptions, env: Env) -> Iterable[Check]:
        return [cls(options, u) for u in options.urls or ()]

    def run(self, env: Env) -> Iterable[Result]:
        parts = urlsplit(self.target)
        links = self.options.units or {}
        unit = links.get(self.target, self.options.unit if is_local(parts.hostname or "")
                         else "")
        result = self.probe(env.clock.now())
        return [dataclasses.replace(result, unit=unit, depends_on=(f"service:{unit}",))
                if unit else result]

    def probe(self, now: float) -> Result:
        """``now``: the wall clock time the certificate's days left are counted from."""
        o = self.options
        parts = urlsplit(self.target)
        host = parts.hostname or ""
        findings: list[Finding] = []
        metrics: list[Metric] = []
        details: list[str] = []
        verify: str | bool = o.ca_file or True
        if parts.scheme == "https":
            found, cert_metrics, info = probe_certificate(
                host, parts.port or 443, server_name=host, ca_file=o.ca_file,
                timeout=o.request_timeout, warn=o.expiry_warn, crit=o.expiry_crit, now=now)
            findings += found
            metrics += cert_metrics
            if info is not None:
                details.append(info.describe())
            if info is None or not name_matches(info, host):
                # The request would fail the same way; one clear reason is enough.
                return self.judged(findings, metrics, details)
            if o.require_https_redirect:
                findings.append(self.redirect_finding(parts.hostname or "", verify))
        findings += self.request(verify, metrics, details)
        return self.judged(findings, metrics, details)

    def request(self, verify: str | bool, metrics: list[Metric],
                details: list[str]) -> list[Finding]:
        import requests  # ~5 MB and 50 ms: loaded when a URL is probed, not with steward

        o = self.options
        t0 = time.monotonic()
        try:
            with requests.get(self.target, timeout=o.request_timeout, verify=verify,
                              allow_redirects=o.follow_redirects, stream=True,
                              headers={"User-Agent": "steward-probe"}) as resp:
                body = resp.raw.read(MAX_BODY, decode_content=True) if o.match else b""
                took = round(time.monotonic() - t0, 6)
                code, final, enc = resp.status_code, resp.url, resp.encoding
        except requests.exceptions.SSLError as e:
            return [Finding(Status.CRIT, f"TLS failed: {_reason(e)}",
                            "the certificate must verify against ca_file or the system CAs")]
        except requests.exceptions.Timeout:
            return [Finding(Status.CRIT, f"no answer within {o.request_timeout:g} s",
                            "httpd hangs or a backend behind it does: check its error log",
                            unresponsive=True)]
        except requests.exceptions.RequestException as e:
            return [Finding(Status.CRIT, f"request failed: {_reason(e)}",
                            "is the web server listening? ss -ltnp", unresponsive=True)]
        status = Status(judge(took, o.warn, o.crit))
        metrics.insert(0, Metric("response_time", took, "s", o.warn.text if o.warn else "",
                                 o.crit.text if o.crit else "", 0))
        details.insert(0, f"{code} from {final} in {took * 1000:.1f} ms")
        findings = [Finding(Status.OK, f"{code} in {took * 1000:.0f} ms")]
        if code not in o.expect:
            findings.append(Finding(
                Status.CRIT, f"status {code}, expected {' or '.join(map(str, o.expect))}"
                + (f" (at {final})" if final != self.target else ""),
                "check the web server's error log and the site's configuration"))
        if status is not Status.OK:
            findings.append(Finding(status, f"response took {took * 1000:.0f} ms",
                                    "the site is slow: check httpd's load and its backends"))
        if o.match and not re.search(o.match, body.decode(enc or "utf-8", errors="replace")):
            findings.append(Finding(Status.CRIT, f"body does not match /{o.match}/",
                                    "the page served is not the expected one: an error page, "
                                    "a default vhost, or a broken application"))
        return findings

    def redirect_finding(self, host: str, verify: str | bool) -> Finding:
        import requests

        netloc = host if self.options.http_port == 80 else f"{host}:{self.options.http_port}"
        plain = urlunsplit(("http", netloc, "/", "", ""))
        remedy = (f"redirect {plain} to https, e.g. in the port-80 VirtualHost: "
                  "Redirect permanent / https://<name>/")
        try:
            resp = requests.get(plain, timeout=self.options.request_timeout, verify=verify,
                                allow_redirects=False, headers={"User-Agent": "steward-probe"})
            resp.close()
        except requests.exceptions.RequestException as e:
            return Finding(Status.CRIT, f"{plain} failed: {_reason(e)}", remedy)
        location = resp.headers.get("Location", "")
        if resp.status_code in REDIRECTS and location.lower().startswith("https://"):
            return Finding(Status.OK, f"{plain} redirects to https")
        got = f"{resp.status_code}" + (f" to {location}" if location else "")
        return Finding(Status.CRIT, f"{plain} does not redirect to https ({got})", remedy)

    def judged(self, findings: list[Finding], metrics: list[Metric],
               details: list[str]) -> Result:
        status, summary, remedy = summarize(findings, lambda: "; ".join(f.text for f in findings))
        lines = [*(f"{f.status.name}: {f.text}" for f in findings), *details]
        return self.result(status, summary, details="\n".join(lines), remedy=remedy,
                           metrics=tuple(metrics), restartable=restartable(findings))


def _reason(e: BaseException) -> str:
    """The useful part of a requests exception, without urllib3's nested reprs."""
    text = str(e)
    marker = "certificate verify failed"
    if marker in text:
        return marker + re.split(r"[')]", text.split(marker, 1)[1], maxsplit=1)[0]
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    return errno.group(1) if errno else text[:200]
