"""httpd's mod_md: the managed domains of httpd's configuration (``MDomain`` lines and
``<MDomain>`` sections, ``MDCertificateAgreement``, ``MDStoreDir``) against md's store
(``domains/<name>/md.json`` and ``pubcert.pem``, ``staging/<name>/job.json``): each domain is
in the store and complete, its last renewal attempt did not fail, its certificate is not close
to expiry, and a renewed certificate waiting in staging gets activated (mod_md needs a graceful
restart of httpd for that: the classic failure is a renewal nobody activates). Part of the
certrenew check."""

from __future__ import annotations

import dataclasses
import email.utils
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from agent.model import Check, Result, Status
from checks.certbase import CertRenewOptions, served_result, x509_dates

MAX_CONF_FILES = 200
MAX_CONF = 512 * 1024
MAX_JSON = 1024 * 1024
STORES = ("etc/httpd/md", "var/lib/httpd/md", "etc/apache2/md")
# md_state_t of mod_md's md.h
STATES = {0: "unknown", 1: "incomplete", 2: "complete", 3: "expired", 4: "error",
          5: "missing information (terms of service not agreed)"}


def read_httpd_conf(main: Path, sysroot: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """({MD name: its DNS names}, {directive: value}) from httpd's config and its Include /
    IncludeOptional files (globs, relative to ServerRoot), bounded in files and size."""
    mds: dict[str, list[str]] = {}
    settings: dict[str, str] = {}
    todo: list[Path] = [main]
    seen: set[Path] = set()
    server_root = main.parent.parent  # /etc/httpd/conf/httpd.conf -> /etc/httpd
    while todo and len(seen) < MAX_CONF_FILES:
        path = todo.pop(0)
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        with path.open("rb") as f:
            text = f.read(MAX_CONF).decode("utf-8", errors="replace")
        for raw in text.splitlines():
            line = raw.strip()
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            key = words[0].lstrip("<").rstrip(">").lower()
            args = [w.rstrip(">").strip('"') for w in words[1:]]
            if key in ("include", "includeoptional") and args:
                base = sysroot / args[0].lstrip("/") if args[0].startswith("/") else \
                    server_root / args[0]
                todo += sorted(base.parent.glob(base.name))[:MAX_CONF_FILES]
            elif key == "serverroot" and args:
                server_root = sysroot / args[0].lstrip("/")
            elif key in ("mdomain", "managed_domain", "manageddomain") and args:
                names = [a.lower() for a in args if "." in a][:100]
                if names:
                    mds.setdefault(names[0], names)
            elif key in ("mdcertificateagreement", "mdstoredir") and args:
                settings[key] = args[0]
    settings["serverroot"] = str(server_root)
    return mds, settings


def _json(path: Path) -> dict[str, Any] | None:
    try:
        with path.open("rb") as f:
            data = json.loads(f.read(MAX_JSON))
    except (OSError, ValueError, RecursionError):  # nesting bombs raise RecursionError
        return None
    return data if isinstance(data, dict) else None


def _rfc822(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def find_store(settings: dict[str, str], sysroot: Path) -> Path | None:
    configured = settings.get("mdstoredir")
    if configured:
        p = Path(configured)
        return sysroot / configured.lstrip("/") if p.is_absolute() else \
            Path(settings["serverroot"]) / configured
    for place in STORES:
        if (sysroot / place / "domains").is_dir():
            return sysroot / place
    return None


def md_results(check: Check, o: CertRenewOptions, httpd_conf: Path, sysroot: Path,
               now: float) -> list[Result]:
    """The results of every managed domain, under ``check``'s name, judged at ``now``."""
    try:
        mds, settings = read_httpd_conf(httpd_conf, sysroot)
    except OSError as e:
        return [check.result(Status.UNKNOWN, f"cannot read {httpd_conf}: {e.strerror}",
                             target="md")]
    if not mds:
        return []
    store = find_store(settings, sysroot)
    out = []
    for name, domains in sorted(mds.items())[:50]:
        out += _merged(_one(check, o, name, domains, store, settings=settings, now=now))
    return out


def _merged(results: list[Result]) -> list[Result]:
    """One result per id: the worst, the others' summaries added to its details."""
    by_id: dict[str, list[Result]] = {}
    for r in results:
        by_id.setdefault(r.check, []).append(r)
    out = []
    for group in by_id.values():
        worst = max(group, key=lambda r: r.status)
        also = [f"also: {r.summary}" for r in group if r is not worst]
        out.append(dataclasses.replace(worst, details="\n".join([worst.details, *also]))
                   if also else worst)
    return out


def _one(check: Check, o: CertRenewOptions, name: str, domains: list[str],
         store: Path | None, *, settings: dict[str, str], now: float) -> list[Result]:
    target = f"md:{name}"
    agreement = settings.get("mdcertificateagreement", "")
    md = _json(store / "domains" / name / "md.json") if store else None
    if store is not None and md is None and (store / "domains" / name / "md.json").exists():
        return [check.result(Status.CRIT, f"mod_md domain {name}: {store}/domains/{name}/"
                             "md.json is not a JSON object (broken or over 1 MB)",
                             target=target, remedy="see httpd's error_log for mod_md; "
                             "move the broken md.json aside and reload httpd")]
    if store is None or md is None:
        return [check.result(Status.WARN, f"mod_md domain {name} is configured but not in "
                             f"md's store ({store or 'no store found'})", target=target,
                             details=f"MDomain {' '.join(domains)}",
                             remedy="systemctl reload httpd (mod_md takes up a new MDomain "
                             "at a restart); see httpd's error_log for mod_md")]
    state = md.get("state")
    details = [f"MDomain {' '.join(domains)}; store {store}/domains/{name}",
               f"state {state} ({STATES.get(state, '?') if isinstance(state, int) else '?'})",
               f"MDCertificateAgreement {agreement or 'not set'}"]
    job = _json(store / "staging" / name / "job.json")
    cert = store / "domains" / name / "pubcert.pem"
    out: list[Result] = []
    if state == 5 or (state != 2 and not agreement):
        out.append(check.result(Status.CRIT, f"mod_md domain {name}: the CA's terms of "
                                "service are not agreed: no certificate is ordered",
                                target=target, details="\n".join(details),
                                remedy="add MDCertificateAgreement accepted to httpd's "
                                "config, then systemctl reload httpd"))
        return out
    if state == 4:
        out.append(check.result(Status.CRIT, f"mod_md domain {name} is in error state",
                                target=target, details="\n".join(details),
                                remedy="see httpd's error_log for mod_md and "
                                f"{store}/domains/{name}/md.json"))
        return out
    if job is not None:
        last = job.get("last") if isinstance(job.get("last"), dict) else {}
        status = last.get("status", 0) if isinstance(last, dict) else 0
        errors = job.get("errors") if isinstance(job.get("errors"), int) else 0
        ran = _rfc822(job.get("last-run"))
        nxt = _rfc822(job.get("next-run"))
        details.append(f"renewal job: finished {job.get('finished')}, errors {errors}, "
                       f"last run {job.get('last-run', '?')}, next run "
                       f"{job.get('next-run', '?')}")
        if status not in (0, None) or errors:
            why = " ".join(str(last.get(k, ""))[:200] for k in ("problem", "detail")
                           if isinstance(last, dict) and last.get(k)).strip()
            out.append(check.result(
                Status.WARN, f"mod_md domain {name}: the last renewal attempt failed "
                f"({errors} error run(s)){': ' + why if why else ''}"[:300], target=target,
                details="\n".join(details), remedy=f"see httpd's error_log for mod_md and "
                f"{store}/staging/{name}/job.json; it retries"
                + (f" at {time.strftime('%Y-%m-%d %H:%M', time.gmtime(nxt))} UTC"
                   if nxt else "")))
        elif job.get("finished") is True:
            since = ran or (store / "staging" / name / "job.json").stat().st_mtime
            hours = (now - since) / 3600
            if hours > o.md_activate_hours:
                out.append(check.result(
                    Status.WARN, f"mod_md domain {name}: a renewed certificate has waited "
                    f"{hours:.0f} h in staging: httpd was not restarted to activate it",
                    target=target, details="\n".join(details),
                    remedy="systemctl reload httpd (and set MDNotifyCmd or a timer to do it "
                    "after each renewal)"))
    x509 = _x509_of(cert, o.tls_timeout)
    if x509 is None:
        out.append(check.result(Status.WARN if state == 1 else Status.CRIT,
                                f"mod_md domain {name}: no certificate yet ({cert})",
                                target=target, details="\n".join(details),
                                remedy="see httpd's error_log for mod_md: the order has not "
                                "succeeded"))
        return out
    start, end, fp = x509
    days = (end - now) / 86400
    details.append(f"{cert}: {days:.0f} days left, SHA-256 {fp[:23]}...")
    if days < o.renew_warn_days:
        out.append(check.result(Status.CRIT if days < o.renew_crit_days else Status.WARN,
                                f"mod_md domain {name}: the certificate expires in "
                                f"{days:.0f} days: renewal is failing", target=target,
                                details="\n".join(details),
                                remedy="see httpd's error_log for mod_md and the md-status "
                                "page (MDMessageCmd to be told)"))
    if not out:
        out.append(check.result(Status.OK, f"mod_md domain {name}: complete, valid "
                                f"{days:.0f} more days", target=target,
                                details="\n".join(details)))
    for endpoint in (o.served or {}).get(name, ())[:16]:
        out.append(served_result(check, o, name, endpoint, disk_start=start, disk_fp=fp,
                                 now=now, target=f"md:{name}:{endpoint}"))
    return out


def _x509_of(cert: Path, timeout: float) -> tuple[float, float, str] | None:
    try:
        with cert.open("rb") as f:
            pem = f.read(65536).decode(errors="replace")
        return x509_dates(pem, timeout)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
