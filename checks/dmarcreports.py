"""DMARC aggregate reports received (RFC 7489 §7.2) from a Maildir (or a directory of report
files): XML, gzip and zip attachments, summarized as who sends as the domain — sources by IP,
volume, SPF/DKIM alignment, disposition, the reverse name (PTR) of each source. A source
failing alignment with volume is a WARN with its IP, PTR and sample count, and says whether it
is new: the sources seen are kept in steward's state directory across runs (under ``steward
run``). Whether this appliance's own report sender ran in the last day is a second result
(checks/dmarcsender.py).

Untrusted input throughout: each message and each decompressed report is capped
(``max_report_bytes``), a DTD or entity declaration is refused before expansion (no billion
laughs, no external entities), the XML is streamed through expat rather than parsed into a
tree, a zip with more members or a higher compression ratio than sane is refused, and a
report of the wrong schema is named and skipped."""

from __future__ import annotations

import contextlib
import email
import email.policy
import gzip
import io
import json
import xml.parsers.expat
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from agent.config.schema import TEXT, CheckOptions, listing, number, option
from agent.env import Env
from agent.fileio import write_atomic
from agent.model import Check, Result, Status
from checks.dmarcsender import evidence_age, find_schedule
from checks.maildns import RESOLVER

MAX_FILES = 2000
MAX_ZIP_MEMBERS = 4
MAX_RATIO = 200  # a real report compresses ~20x; a bomb thousands of times
MAX_PTR = 32  # sources whose reverse name is looked up (the biggest, and every failing one)
MAX_SEEN = 20000  # source IPs remembered across runs
STATE_FILE = "dmarcreports.json"


class Refused(Exception):
    pass


@dataclass
class Source:
    count: int = 0
    failing: int = 0  # neither DKIM nor SPF aligned (the policy evaluation)
    dispositions: dict[str, int] = field(default_factory=lambda: defaultdict(int))


@dataclass(frozen=True)
class DmarcReportOptions(CheckOptions):
    maildir: str | None = option(None, TEXT, "Maildir (or directory of .xml/.gz/.zip files) "
                                 "where the rua reports arrive; unset: the check yields nothing")
    max_report_bytes: int = option(10 * 1024 * 1024, number(1024, 1 << 30, integer=True),
                                   "bytes of one message or one decompressed report at most")
    fail_warn: int = option(10, number(1, 1 << 30, integer=True),
                            "messages from one source failing DMARC that make a WARN")
    resolvers: tuple[str, ...] = option((), listing(RESOLVER),
                                        "resolvers for the sources' PTR names; none: those "
                                        "of /etc/resolv.conf")
    ptr_timeout: float = option(2.0, number(0.1, 30), "seconds for one PTR lookup")
    sender_evidence: str | None = option(None, TEXT, "file the DMARC report sender writes "
                                         "each run (its log); unset: the file its cron line "
                                         "redirects output to")
    sender_max_age: float = option(26.0, number(1, 24 * 365), "hours: report sender "
                                   "evidence older than this is a WARN")
    timeout: float = option(60.0, number(0.1, 3600), "seconds before the check is UNKNOWN")
    interval: float = option(3600.0, number(1, 86400), "seconds between runs under steward "
                             "run")


def _read_capped(stream: IO[bytes] | gzip.GzipFile, cap: int, what: str) -> bytes:
    data = stream.read(cap + 1)
    if len(data) > cap:
        raise Refused(f"{what} is over {cap} bytes")
    return data


def unpack(name: str, data: bytes, cap: int) -> bytes:
    """The XML of one attachment/file (by content: gzip, zip or plain)."""
    if data[:2] == b"\x1f\x8b":
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as g:
            try:
                out = _read_capped(g, cap, f"{name} (gunzipped)")
            except (OSError, EOFError) as e:
                raise Refused(f"{name}: broken gzip: {e}") from None
        if len(out) > MAX_RATIO * max(len(data), 1024):
            raise Refused(f"{name}: gzip expands {len(out) // len(data)}x: refused as a bomb")
        return out
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                members = z.infolist()
                if not 0 < len(members) <= MAX_ZIP_MEMBERS:
                    raise Refused(f"{name}: zip with {len(members)} members")
                m = members[0]
                if m.file_size > cap or m.file_size > MAX_RATIO * max(m.compress_size, 1024):
                    raise Refused(f"{name}: zip member {m.filename[:60]} would expand to "
                                  f"{m.file_size} bytes: refused as a bomb")
                with z.open(m) as f:
                    return _read_capped(f, cap, f"{name} (unzipped)")
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as e:
            raise Refused(f"{name}: broken zip: {e}") from None
    return data


def parse_report(data: bytes) -> list[tuple[str, int, str, str, str]]:
    """(source_ip, count, disposition, dkim, spf) per <record> of an aggregate report;
    Refused names a DTD, an entity, broken XML or the wrong schema."""
    parser = xml.parsers.expat.ParserCreate()
    rows: list[tuple[str, int, str, str, str]] = []
    path: list[str] = []
    cur: dict[str, str] = {}
    text: list[str] = []

    def refuse_dtd(*args: object) -> None:
        raise Refused("the report declares a DTD or entities: refused (no entity expansion)")

    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_dtd
    parser.ExternalEntityRefHandler = refuse_dtd  # type: ignore[assignment]

    def start(tag: str, attrs: object) -> None:
        if len(path) > 16:
            raise Refused("XML nested deeper than a DMARC report")
        path.append(tag)
        text.clear()
        if path == ["feedback", "record"]:
            cur.clear()

    def end(tag: str) -> None:
        where = "/".join(path[1:])
        value = "".join(text).strip()[:256]
        if where in ("record/row/source_ip", "record/row/count",
                     "record/row/policy_evaluated/disposition",
                     "record/row/policy_evaluated/dkim", "record/row/policy_evaluated/spf"):
            cur[where.rsplit("/", 1)[1]] = value
        if where == "record":
            if len(rows) >= 100000:
                raise Refused("more than 100000 records")
            try:
                count = int(cur.get("count", ""))
            except ValueError:
                raise Refused("a record without a numeric <count>") from None
            rows.append((cur.get("source_ip", "?"), count, cur.get("disposition", "?"),
                         cur.get("dkim", "?"), cur.get("spf", "?")))
        path.pop()
        text.clear()

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = lambda s: text.append(s) if len(text) < 64 else None
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as e:
        raise Refused(f"not well-formed XML: {e}") from None
    except RecursionError:
        raise Refused("XML too deep") from None
    if not rows and b"<feedback" not in data[:4096]:
        raise Refused("not a DMARC aggregate report (no <feedback> root)")
    return rows


def _files(root: Path) -> Iterator[Path]:
    dirs = [root / "cur", root / "new"] if (root / "cur").is_dir() else [root]
    n = 0
    for d in dirs:
        for p in sorted(d.iterdir()):
            if p.is_file() and not p.is_symlink():
                n += 1
                if n > MAX_FILES:
                    return
                yield p


def _attachments(path: Path, cap: int) -> Iterable[tuple[str, bytes]]:
    if path.stat().st_size > cap:
        raise Refused(f"{path.name} is over {cap} bytes")
    data = path.read_bytes()
    if path.suffix in (".xml", ".gz", ".zip") or data[:1] in (b"<", b"\x1f", b"P"):
        return [(path.name, data)]
    msg = email.message_from_bytes(data, policy=email.policy.default)
    out = []
    for part in list(msg.walk())[:32]:
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        fname = part.get_filename() or ""
        if ctype in ("application/gzip", "application/x-gzip", "application/zip",
                     "application/x-zip-compressed", "text/xml", "application/xml") or \
                fname.endswith((".xml", ".gz", ".zip")):
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                out.append((f"{path.name}:{fname or ctype}", payload))
    return out


def _ptrs(ips: list[str], resolvers: tuple[str, ...], timeout: float) -> dict[str, str]:
    """The PTR name of each address (or why there is none), looked up in parallel."""
    import ipaddress

    from checks.maildns.lookup import Lookup

    valid = []
    for ip in ips[:MAX_PTR]:
        with contextlib.suppress(ValueError):
            valid.append(str(ipaddress.ip_address(ip)))
    if not valid:
        return {}
    lookup = Lookup(resolvers, timeout)

    def one(ip: str) -> str:
        a = lookup.ptr(ip)
        if a.kind == "ok":
            return a.records[0][:253]
        return "no PTR" if a.void else "PTR lookup failed"

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(valid, pool.map(one, valid)))


def _seen(state_dir: Path, key: str, ips: Iterable[str] | None = None) -> set[str] | None:
    """The source IPs seen in earlier runs for ``key`` (None: no earlier run); with ``ips``,
    remember those too."""
    path = state_dir / STATE_FILE
    try:
        data = json.loads(path.read_text()[:4 * 1024 * 1024])
    except (OSError, ValueError, RecursionError):
        data = {}
    data = data if isinstance(data, dict) else {}
    entry = data.get(key)
    before = {x for x in entry if isinstance(x, str)} if isinstance(entry, list) else None
    if ips is not None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        data[key] = sorted((before or set()) | set(ips))[:MAX_SEEN]
        write_atomic(path, json.dumps(data, sort_keys=True), 0o600)
    return before


class DmarcReportCheck(Check):
    name = "dmarcreports"
    Options = DmarcReportOptions
    options: DmarcReportOptions

    def run(self, env: Env) -> Iterable[Result]:
        out = self._sender(env)
        if self.options.maildir:
            out.insert(0, self._reports(env, self.options.maildir))
        return out

    def _sender(self, env: Env) -> list[Result]:
        o = self.options
        sched = find_schedule(env.sysroot)
        evidence = o.sender_evidence or (sched.output if sched else "")
        if sched is None and not o.sender_evidence:
            return []
        what = sched.sender if sched else "the DMARC report sender"
        where = f"scheduled in {sched.where}: {sched.line}" if sched else "no cron entry found"
        if not evidence:
            return [self.result(Status.WARN, f"{what} is scheduled but leaves no evidence of "
                                "running", "sender", details=where,
                                remedy="redirect its output to a log file in the cron line "
                                "(>> /var/log/dmarc_report.log 2>&1) or set sender_evidence "
                                "in [checks.dmarcreports]")]
        age = evidence_age(env.sysroot, evidence, env.clock.now())
        details = f"{where}\nevidence: {evidence}"
        if age is None:
            return [self.result(Status.WARN, f"{what} never ran: no {evidence}", "sender",
                                details=details, remedy=f"run {what} by hand and read its "
                                "errors; check that cron runs it")]
        if age > o.sender_max_age * 3600:
            return [self.result(Status.WARN, f"{what} last ran {age / 3600:.0f} h ago "
                                f"({evidence}), more than {o.sender_max_age:g} h",
                                "sender", details=details,
                                remedy=f"see {evidence} for its errors and check that cron "
                                "(or its timer) still runs it")]
        return [self.result(Status.OK, f"{what} ran {age / 3600:.1f} h ago", "sender",
                            details=details)]

    def _reports(self, env: Env, maildir: str) -> Result:
        o = self.options
        root = env.sysroot / maildir.lstrip("/")
        if not root.is_dir():
            return self.result(Status.UNKNOWN, f"no report directory {root}",
                               remedy="set maildir in [checks.dmarcreports] to the Maildir "
                               "receiving the rua reports")
        sources: dict[str, Source] = defaultdict(Source)
        refused: list[str] = []
        reports = 0
        for path in _files(root):
            try:
                for name, data in _attachments(path, o.max_report_bytes):
                    try:
                        rows = parse_report(unpack(name, data, o.max_report_bytes))
                    except Refused as e:
                        refused.append(f"{name}: {e}"[:200])
                        continue
                    reports += 1
                    for ip, count, disp, dkim, spf in rows:
                        s = sources[ip]
                        s.count += count
                        s.dispositions[disp] += count
                        if dkim != "pass" and spf != "pass":
                            s.failing += count
            except (Refused, OSError) as e:
                refused.append(f"{path.name}: {e}"[:200])
        biggest = sorted(sources.items(), key=lambda kv: -kv[1].count)[:20]
        bad = sorted(((ip, s) for ip, s in sources.items() if s.failing >= o.fail_warn),
                     key=lambda kv: -kv[1].failing)
        names = _ptrs(list(dict.fromkeys([ip for ip, _ in bad] + [ip for ip, _ in biggest])),
                      o.resolvers, o.ptr_timeout)
        try:
            seen = _seen(env.state_dir, str(root), sources if env.keeps_state else None)
        except OSError as e:
            seen, refused = None, [*refused, f"state not kept: {e}"[:200]]
        details = [f"{reports} report(s) read from {root}, {len(refused)} refused"]
        for ip, s in biggest:
            disp = ", ".join(f"{k} {v}" for k, v in sorted(s.dispositions.items()))
            details.append(f"{ip} ({names.get(ip, '?')}): {s.count} message(s), {s.failing} "
                           f"failing DMARC ({disp})")
        details += [f"refused: {r}" for r in refused[:10]]
        if bad:
            new = [(ip, s) for ip, s in bad if seen is None or ip not in seen]
            ip, s = (new or bad)[0]
            kind = "new source" if new else "known source"
            more = len(new or bad) - 1
            return self.result(
                Status.WARN, f"{kind} {ip} ({names.get(ip, '?')}) failing DMARC alignment: "
                f"{s.failing} message(s)" + (f", and {more} more {kind}(s)" if more else "")
                + (f"; {len(bad) - len(new)} known failing" if new and len(bad) > len(new)
                   else ""),
                details="\n".join(details),
                remedy=f"if {ip} is yours, add it to SPF or sign its mail with DKIM; if "
                "not, it is spoofing your domain: p=reject stops it")
        if refused and not reports:
            return self.result(Status.WARN, f"every report was refused ({len(refused)})",
                               details="\n".join(details),
                               remedy="see the refusals; hostile or broken reports are "
                               "skipped, never expanded")
        total = sum(s.count for s in sources.values())
        return self.result(Status.OK, f"{reports} report(s): {total} message(s) from "
                           f"{len(sources)} source(s), none failing with volume",
                           details="\n".join(details))
