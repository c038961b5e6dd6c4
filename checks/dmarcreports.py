"""DMARC aggregate reports received (RFC 7489 §7.2) from a Maildir (or a directory of report
files): XML, gzip and zip attachments, summarized as who sends as the domain — sources by IP,
volume, SPF/DKIM alignment, disposition. A source failing alignment with volume is a WARN with
its IP and sample count.

Untrusted input throughout: each message and each decompressed report is capped
(``max_report_bytes``), a DTD or entity declaration is refused before expansion (no billion
laughs, no external entities), the XML is streamed through expat rather than parsed into a
tree, a zip with more members or a higher compression ratio than sane is refused, and a
report of the wrong schema is named and skipped."""

from __future__ import annotations

import email
import email.policy
import gzip
import io
import xml.parsers.expat
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from agent.config.schema import TEXT, CheckOptions, number, option
from agent.env import Env
from agent.model import Check, Result, Status

MAX_FILES = 2000
MAX_ZIP_MEMBERS = 4
MAX_RATIO = 200  # a real report compresses ~20x; a bomb thousands of times


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


class DmarcReportCheck(Check):
    name = "dmarcreports"
    Options = DmarcReportOptions
    options: DmarcReportOptions

    def run(self, env: Env) -> Iterable[Result]:
        o = self.options
        if not o.maildir:
            return []
        root = env.sysroot / o.maildir.lstrip("/")
        if not root.is_dir():
            return [self.result(Status.UNKNOWN, f"no report directory {root}",
                                remedy="set maildir in [checks.dmarcreports] to the Maildir "
                                "receiving the rua reports")]
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
        details = [f"{reports} report(s) read from {root}, {len(refused)} refused"]
        for ip, s in sorted(sources.items(), key=lambda kv: -kv[1].count)[:20]:
            disp = ", ".join(f"{k} {v}" for k, v in sorted(s.dispositions.items()))
            details.append(f"{ip}: {s.count} message(s), {s.failing} failing DMARC ({disp})")
        details += [f"refused: {r}" for r in refused[:10]]
        bad = [(ip, s) for ip, s in sources.items() if s.failing >= o.fail_warn]
        if bad:
            ip, s = max(bad, key=lambda kv: kv[1].failing)
            return [self.result(Status.WARN, f"{len(bad)} source(s) failing DMARC with volume: "
                                f"{ip} sent {s.failing} message(s) failing SPF and DKIM "
                                "alignment", details="\n".join(details),
                                remedy=f"if {ip} is yours, add it to SPF or sign its mail with "
                                "DKIM; if not, it is spoofing your domain: p=reject stops it")]
        if refused and not reports:
            return [self.result(Status.WARN, f"every report was refused ({len(refused)})",
                                details="\n".join(details),
                                remedy="see the refusals; hostile or broken reports are "
                                "skipped, never expanded")]
        total = sum(s.count for s in sources.values())
        return [self.result(Status.OK, f"{reports} report(s): {total} "
                            f"message(s) from {len(sources)} source(s), none failing with "
                            "volume", details="\n".join(details))]
