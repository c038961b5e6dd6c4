"""MTA-STS (RFC 8461): the ``_mta-sts`` TXT record, the policy fetched over HTTPS with the
certificate verified for ``mta-sts.<domain>``, its ``mx`` patterns against the published MX
hosts; and TLS-RPT (RFC 8460): the ``_smtp._tls`` TXT record, parsed strictly. The policy
host is resolved through the same resolvers as the records, and nothing unbounded is read:
at most 64 kB of policy, redirects are not followed (§3.3)."""

from __future__ import annotations

import re
import socket
import ssl
from dataclasses import dataclass, field

from agent.model import Result, Status
from checks.maildns.lookup import Invalid
from checks.maildns.records import Ctx

POLICY_PATH = "/.well-known/mta-sts.txt"
POLICY_CAP = 64 * 1024
MAX_AGE_MAX = 31557600  # §3.2: up to one year
_ID = re.compile(r"[A-Za-z0-9]{1,32}\Z")
_FIELD = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,31})=([\x21-\x3a\x3c\x3e-\x7e]*)\Z")
_MX = re.compile(r"(\*\.)?([A-Za-z0-9-]{1,63}\.)+[A-Za-z0-9-]{1,63}\Z")
_MAILTO = re.compile(r"mailto:[^@\s,;!]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+\Z", re.ASCII)
_HTTPS = re.compile(r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[\x21-\x2b\x2d-\x3a\x3c-\x7e]*)?\Z",
                    re.ASCII)


def parse_sts_txt(text: str) -> dict[str, str] | Invalid:
    """``v=STSv1; id=...`` (§3.1): v first, id 1-32 alphanumerics; extensions allowed."""
    fields = [f.strip() for f in text.split(";")]
    if fields and fields[-1] == "":
        fields.pop()
    out: dict[str, str] = {}
    for f in fields:
        m = _FIELD.match(f)
        if not m:
            return Invalid(f"field {f[:60]!r} is not name=value")
        if m.group(1) in out:
            return Invalid(f"{m.group(1)} given twice")
        out[m.group(1)] = m.group(2)
    if not fields or not fields[0].startswith("v="):
        return Invalid("v=STSv1 is not the first field")
    if out["v"] != "STSv1":
        return Invalid(f"v={out['v'][:20]} (accepted: STSv1)")
    if "id" not in out:
        return Invalid("no id= field")
    if not _ID.match(out["id"]):
        return Invalid(f"id={out['id'][:40]} is not 1 to 32 letters and digits")
    return out


@dataclass(frozen=True)
class Policy:
    mode: str
    max_age: int
    mx: tuple[str, ...]
    unknown: tuple[str, ...] = field(default=())


def parse_policy(text: str) -> Policy | Invalid:
    """The policy body (§3.2): ``key: value`` lines, version first, one mode and max_age,
    mx lines (at least one unless mode is none)."""
    lines = [ln for ln in re.split(r"\r?\n", text) if ln.strip()]
    if not lines:
        return Invalid("the policy is empty")
    seen: dict[str, str] = {}
    mx: list[str] = []
    unknown: list[str] = []
    errors: list[str] = []
    for n, line in enumerate(lines, 1):
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", key):
            errors.append(f"line {n} {line[:60]!r} is not key: value")
            continue
        if key == "mx":
            if not _MX.match(value.rstrip(".")):
                errors.append(f"mx: {value[:60]!r} is not a host name or *.domain pattern")
            else:
                mx.append(value.lower().rstrip("."))
        elif key in ("version", "mode", "max_age"):
            if key in seen:
                errors.append(f"{key} given twice")
            seen[key] = value
        else:
            unknown.append(key)
    if not lines[0].startswith("version"):
        errors.append("version is not the first line")
    if seen.get("version") != "STSv1":
        errors.append(f"version: {seen.get('version', '(missing)')[:20]} (accepted: STSv1)")
    mode = seen.get("mode", "")
    if mode not in ("enforce", "testing", "none"):
        errors.append(f"mode: {mode[:20] or '(missing)'} (accepted: enforce, testing, none)")
    age = seen.get("max_age", "")
    if not age.isdigit() or len(age) > 10 or int(age) > MAX_AGE_MAX:
        errors.append(f"max_age: {age[:20] or '(missing)'} (accepted: 0 to {MAX_AGE_MAX} s)")
    if not mx and mode in ("enforce", "testing"):
        errors.append(f"no mx: line (required with mode {mode})")
    if errors:
        return Invalid("; ".join(errors))
    return Policy(mode, int(age), tuple(mx), tuple(unknown))


def mx_matches(pattern: str, host: str) -> bool:
    """§4.1: a literal name, or ``*.domain`` matching exactly one more leftmost label."""
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return host == pattern


class FetchError(Exception):
    pass


def fetch_policy(address: str, port: int, host: str, timeout: float,
                 cafile: str | None) -> tuple[int, str, str]:
    """(HTTP status, content type, body) of https://host/.well-known/mta-sts.txt asked at
    ``address``; the certificate must be valid for ``host``. FetchError says why not."""
    import http.client

    ctx = ssl.create_default_context(cafile=cafile)
    try:
        raw = socket.create_connection((address, port), timeout=timeout)
    except OSError as e:
        raise FetchError(f"cannot connect to {address} port {port}: "
                         f"{e.strerror or e}") from None
    try:
        try:
            sock = ctx.wrap_socket(raw, server_hostname=host)
        except ssl.SSLCertVerificationError as e:
            raise FetchError(f"certificate of {host} not valid: "
                             f"{e.verify_message or e.reason}") from None
        except (ssl.SSLError, OSError) as e:
            raise FetchError(f"TLS with {host} failed: {e}") from None
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = sock
        try:
            conn.putrequest("GET", POLICY_PATH, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", host)
            conn.putheader("Connection", "close")
            conn.endheaders()
            resp = conn.getresponse()
            body = resp.read(POLICY_CAP + 1)
        except (http.client.HTTPException, OSError) as e:
            raise FetchError(f"HTTPS request to {host} failed: {e or type(e).__name__}") \
                from None
        finally:
            conn.close()
    finally:
        raw.close()
    if len(body) > POLICY_CAP:
        raise FetchError(f"the policy is over {POLICY_CAP // 1024} kB: refused")
    ctype = resp.getheader("Content-Type", "") or ""
    return resp.status, ctype, body.decode("utf-8", errors="replace")


def _failed(ctx: Ctx, rule: str, what: str, name: str, error: str) -> Result:
    if error.startswith("CNAME loop"):  # the zone's fault, not the resolver's
        return ctx.result(rule, Status.CRIT, f"{what} record unreadable: {error}"[:300],
                          remedy=f"make the CNAME chain at {name} end at a TXT record")
    return ctx.result(rule, Status.UNKNOWN, f"{what} lookup failed: {error}"[:300],
                      remedy="check the resolvers")


def _one_txt(ctx: Ctx, rule: str, what: str, name: str, *, version: str, publish: str,
             absent: str, several: str) -> Result | str:
    """The one TXT record at ``name`` tagged ``v=<version>``, or the result saying why not:
    the lookup failed (UNKNOWN), none (WARN), or several, which senders treat as none (CRIT)."""
    ans = ctx.lookup.txt(name)
    if ans.kind == "error":
        return _failed(ctx, rule, what, name, ans.error)
    found = [t for t in ans.records if re.search(rf"(\A|;)\s*v\s*=\s*{version}", t)]
    if not found:
        return ctx.result(rule, Status.WARN, absent,
                          [f"TXT at {name}: {t[:200]}" for t in ans.records],
                          remedy=f"publish {publish}")
    if len(found) > 1:
        return ctx.result(rule, Status.CRIT, f"{name} has {len(found)} v={version} records "
                          f"({several})", [t[:200] for t in found],
                          remedy=f"keep one v={version} record and delete the others")
    return found[0]


def mta_sts_rule(ctx: Ctx, port: int, timeout: float, cafile: str | None) -> Result:
    d = ctx.domain
    name = f"_mta-sts.{d}"
    host = f"mta-sts.{d}"
    url = f"https://{host}{POLICY_PATH}"
    publish = (f'{name}. TXT "v=STSv1; id=<date-serial>" and serve at {url} '
               f'"version: STSv1\\nmode: enforce\\nmx: mail.{d}\\nmax_age: 604800"')
    # a v=STSv1 out of place is a mistake to name, not an unrelated TXT record
    one = _one_txt(ctx, "mta-sts", "MTA-STS", name, version="STSv1", publish=publish,
                   absent=f"{d} publishes no MTA-STS policy: senders may deliver over "
                   "unauthenticated or plain connections",
                   several="senders then ignore MTA-STS")
    if isinstance(one, Result):
        return one
    txt = parse_sts_txt(one)
    record = [f"record: {name} TXT {one[:200]}"]
    if isinstance(txt, Invalid):
        return ctx.result("mta-sts", Status.CRIT, f"MTA-STS record is invalid: {txt.reason}",
                          record, remedy=f"publish {name}. TXT \"v=STSv1; id=<date-serial>\"")
    a, aaaa = ctx.lookup.addresses(host)
    addresses = [*a.records, *aaaa.records]
    if not addresses:
        why = a.error or aaaa.error or "no A/AAAA record"
        return ctx.result("mta-sts", Status.CRIT, f"MTA-STS record without a policy: {host} "
                          f"does not resolve ({why})", record,
                          remedy=f"publish {host}. A <address of the web server> and serve "
                          f"the policy at {url}, or delete {name}")
    errors = []
    got = None
    for address in addresses[:4]:
        try:
            got = fetch_policy(address, port, host, timeout, cafile)
            break
        except FetchError as e:
            errors.append(str(e))
    if got is None:
        return ctx.result("mta-sts", Status.CRIT, f"MTA-STS policy unreachable: {errors[0]}",
                          [*record, *(f"{url}: {e}" for e in errors)],
                          remedy=f"serve the policy at {url} with a certificate valid for "
                          f"{host} from a public CA, or delete {name}")
    status, ctype, body = got
    record.append(f"policy {url} (HTTP {status}, {ctype or 'no Content-Type'}):")
    record += [f"  {ln[:200]}" for ln in body.splitlines()[:20]]
    if status != 200:
        return ctx.result("mta-sts", Status.CRIT, f"MTA-STS policy unreachable: {url} "
                          f"answered HTTP {status}", record,
                          remedy=f"serve the policy at {url} (redirects are not followed), "
                          f"or delete {name}")
    policy = parse_policy(body)
    if isinstance(policy, Invalid):
        return ctx.result("mta-sts", Status.CRIT, f"MTA-STS policy is invalid: "
                          f"{policy.reason}"[:300], record,
                          remedy=f"serve at {url}: version: STSv1, mode: enforce, "
                          f"mx: <each MX host or *.domain>, max_age: 604800")
    return _judge(ctx, policy, ctype, record, url)


def _judge(ctx: Ctx, policy: Policy, ctype: str, record: list[str], url: str) -> Result:
    d = ctx.domain
    problems: list[tuple[Status, str, str]] = []
    mx = ctx.lookup.query(d, "MX")
    hosts = [r.split(" ", 1)[1] for r in sorted(mx.records, key=lambda r: int(r.split(" ")[0]))]
    if policy.mode != "none":
        unmatched = [h for h in hosts if not any(mx_matches(p, h) for p in policy.mx)]
        if mx.kind == "error":
            problems.append((Status.UNKNOWN, f"MX lookup failed: {mx.error}",
                             "check the resolvers"))
        elif unmatched:
            status = Status.CRIT if policy.mode == "enforce" else Status.WARN
            problems.append((status, f"MX host(s) {', '.join(unmatched)} match no mx: line of "
                             "the policy (senders enforcing it will not deliver there)",
                             f"add {'; '.join('mx: ' + h for h in unmatched)} to {url} and "
                             f"change the id= of _mta-sts.{d}"))
    if policy.mode == "testing":
        problems.append((Status.WARN, "mode: testing: failures are reported, not enforced",
                         f"once TLS reports are clean, set mode: enforce at {url} and change "
                         f"the id= of _mta-sts.{d}"))
    elif policy.mode == "none":
        problems.append((Status.WARN, "mode: none: the policy is withdrawn",
                         f"set mode: enforce at {url}, or delete _mta-sts.{d} once max_age "
                         "has passed"))
    if policy.max_age < 86400:
        problems.append((Status.WARN, f"max_age {policy.max_age} s is under a day: senders "
                         "forget the policy quickly", f"set max_age: 604800 (or more) at {url}"))
    if not ctype.lower().startswith("text/plain"):
        problems.append((Status.WARN, f"Content-Type {ctype or '(none)'} is not text/plain "
                         "(§3.3 requires it)", f"serve {url} as text/plain"))
    if not problems:
        return ctx.result("mta-sts", Status.OK, f"MTA-STS mode enforce, every MX host "
                          f"matched, max_age {policy.max_age} s", record)
    worst = max((s for s, _, _ in problems), key=lambda s: s.severity)
    return ctx.result("mta-sts", worst, "; ".join(p for _, p, _ in problems), record,
                      remedy="; ".join(dict.fromkeys(r for _, _, r in problems)))


def parse_tlsrpt(text: str) -> list[str] | Invalid:
    """``v=TLSRPTv1; rua=<uri>[,<uri>]`` (RFC 8460 §3): v first, exactly one rua, each URI
    mailto: or https:; returns the URIs."""
    fields = [f.strip() for f in text.split(";")]
    if fields and fields[-1] == "":
        fields.pop()
    if not fields or fields[0] != "v=TLSRPTv1":
        return Invalid("v=TLSRPTv1 is not the first field")
    seen: dict[str, str] = {}
    for f in fields[1:]:
        key, sep, value = f.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}", key):
            return Invalid(f"field {f[:60]!r} is not name=value")
        if key in seen or key == "v":
            return Invalid(f"{key} given twice")
        seen[key] = value.strip()
    if "rua" not in seen:
        return Invalid("no rua= field")
    uris = [u.strip() for u in seen["rua"].split(",")]
    bad = [u for u in uris if not (_MAILTO.match(u) or _HTTPS.match(u))]
    if bad:
        return Invalid(f"rua {bad[0][:80]!r} is not a mailto: or https: URI")
    return uris


def tlsrpt_rule(ctx: Ctx) -> Result:
    d = ctx.domain
    name = f"_smtp._tls.{d}"
    publish = f'{name}. TXT "v=TLSRPTv1; rua=mailto:tls-reports@{d}"'
    one = _one_txt(ctx, "tls-rpt", "TLS-RPT", name, version="TLSRPTv1", publish=publish,
                   absent=f"{d} publishes no TLS-RPT record: senders cannot report TLS "
                   "failures (MTA-STS, DANE)", several="senders then send no reports")
    if isinstance(one, Result):
        return one
    uris = parse_tlsrpt(one)
    record = [f"record: {name} TXT {one[:300]}"]
    if isinstance(uris, Invalid):
        return ctx.result("tls-rpt", Status.CRIT, f"TLS-RPT record is invalid: {uris.reason}",
                          record, remedy=f"publish {publish}")
    return ctx.result("tls-rpt", Status.OK, f"TLS reports go to {', '.join(uris)}"[:300],
                      record)
