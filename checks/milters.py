"""Postfix's milter chain: every ``smtpd_milters``/``non_smtpd_milters`` entry (read with
``postconf -h``) answers the milter protocol's option negotiation (SMFIC_OPTNEG), not only a
TCP connect; a milter that adds headers (a DKIM signer, rspamd) behind
``milter_default_action = accept`` lets mail through unsigned when it fails. OpenDKIM's
KeyTable/SigningTable consistency (checks/opendkim.py) and rspamd's controller and redis
(checks/rspamd.py) are reported here too."""

from __future__ import annotations

import contextlib
import re
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config.schema import TEXT, CheckOptions, number, option
from agent.env import Env
from agent.fileio import read_exactly
from agent.model import Check, Result, Status
from agent.system.commands import CommandError

SMFI_VERSION = 6
SMFIF_ADDHDRS, SMFIF_CHGHDRS = 0x01, 0x10
SMFIF_INSHEADER = 0x80
_ALL_ACTIONS, _ALL_PROTOCOL = 0x1FF, 0x1FFFFF
MAX_REPLY = 65536


@dataclass(frozen=True)
class MilterOptions(CheckOptions):
    postfix_config_dir: str | None = option(None, TEXT, "Postfix configuration directory "
                                            "(postconf -c); unset: Postfix's default")
    opendkim_conf: str | None = option(None, TEXT, "OpenDKIM's configuration, whose KeyTable "
                                       "and SigningTable are cross-checked; unset: "
                                       "/etc/opendkim.conf if it exists")
    rspamd_conf_dir: str | None = option(None, TEXT, "rspamd's configuration directory, "
                                         "whose controller and redis servers are pinged; "
                                         "unset: /etc/rspamd if it exists")
    connect_timeout: float = option(5.0, number(0.1, 120), "seconds for one milter's answer")
    timeout: float = option(30.0, number(0.1, 3600), "seconds before the check is UNKNOWN")


@dataclass(frozen=True)
class Milter:
    spec: str            # as configured: inet:host:port, unix:/path
    default_action: str  # the entry's own default_action, or milter_default_action
    source: str          # smtpd_milters or non_smtpd_milters


def parse_milters(value: str, default_action: str, source: str) -> list[Milter]:
    """Postfix's list syntax: entries separated by space or comma, an entry in braces with
    ``name=value`` settings (``{ inet:host:port, default_action=tempfail }``)."""
    out = []
    for m in re.finditer(r"\{([^}]*)\}|([^\s,{}]+)", value[:8192]):
        if m.group(1) is not None:
            parts = [p.strip() for p in re.split(r"[\s,]+", m.group(1)) if p.strip()]
            if not parts:
                continue
            settings = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
            out.append(Milter(parts[0], settings.get("default_action", default_action),
                              source))
        else:
            out.append(Milter(m.group(2), default_action, source))
    return out[:32]


def optneg(spec: str, queue_dir: Path, timeout: float) -> tuple[int, int, int]:
    """(version, actions, protocol) the milter answers to SMFIC_OPTNEG; OSError or
    ValueError says why not."""
    kind, _, where = spec.partition(":")
    if kind == "inet":
        host, _, port = where.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        if not port.isdigit():
            raise ValueError(f"{spec}: no port")
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    elif kind in ("unix", "local"):
        # a chrooted smtpd (Debian's default) finds it inside the queue directory
        inside = queue_dir / where.lstrip("/")
        path = inside if inside.exists() else Path(where)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError:
            sock.close()
            raise
    else:
        raise ValueError(f"{spec}: not inet:host:port or unix:/path")
    with sock:
        body = b"O" + struct.pack(">III", SMFI_VERSION, _ALL_ACTIONS, _ALL_PROTOCOL)
        sock.sendall(struct.pack(">I", len(body)) + body)
        head = _read(sock, 4)
        (length,) = struct.unpack(">I", head)
        if not 13 <= length <= MAX_REPLY:
            raise ValueError(f"{spec}: reply of {length} bytes is not an option negotiation")
        reply = _read(sock, length)
        if reply[:1] != b"O":
            raise ValueError(f"{spec}: answered command {reply[:1]!r}, not O (SMFIC_OPTNEG)")
        version, actions, protocol = struct.unpack(">III", reply[1:13])
        with contextlib.suppress(OSError):  # the negotiation is what counts
            sock.sendall(struct.pack(">I", 1) + b"Q")
        return version, actions, protocol


def _read(sock: socket.socket, n: int) -> bytes:
    data = read_exactly(sock.recv, n)
    if len(data) < n:
        raise ValueError("the milter closed the connection during negotiation")
    return data


_REF = re.compile(r"\$\{?([A-Za-z0-9_]+)\}?")


def _expand(value: str, values: dict[str, str], depth: int = 0) -> str:
    if depth > 4:
        return value
    return _REF.sub(lambda m: _expand(values.get(m.group(1), ""), values, depth + 1), value)


class MilterCheck(Check):
    name = "milter"
    Options = MilterOptions
    options: MilterOptions

    def run(self, env: Env) -> Iterable[Result]:
        o = self.options
        names = ["smtpd_milters", "non_smtpd_milters", "milter_default_action",
                 "queue_directory"]
        if o.postfix_config_dir is None and not (env.sysroot / "etc/postfix/main.cf").exists():
            return self._rspamd(env)  # no Postfix configured here: rspamd's parts at most
        try:
            values = dict(zip(names, self._postconf(env, names)))
            # $name references (non_smtpd_milters = $smtpd_milters): expanded here, since
            # postconf -x takes seconds evaluating every default
            refs = sorted({r for v in values.values() for r in _REF.findall(v)} - set(values))
            if refs:
                values.update(zip(refs, self._postconf(env, refs[:16])))
        except CommandError as e:
            return [self.result(Status.UNKNOWN, f"postconf failed: {e}"[:300],
                                remedy="check the Postfix installation (postconf -n)")]
        smtpd, non_smtpd, default, queue = (_expand(values[n], values) for n in names)
        milters = parse_milters(smtpd, default, "smtpd_milters") + \
            parse_milters(non_smtpd, default, "non_smtpd_milters")
        results = self._opendkim(env) + self._rspamd(env)
        if not milters:
            return [*results, self.result(Status.OK, "no milters configured in Postfix",
                                          details="smtpd_milters and non_smtpd_milters are "
                                          "empty")]
        seen: dict[str, Any] = {}
        for m in milters:
            if m.spec not in seen:
                try:
                    seen[m.spec] = optneg(m.spec, Path(queue or "/var/spool/postfix"),
                                          o.connect_timeout)
                except (OSError, ValueError) as e:
                    seen[m.spec] = e
            results.append(self._judge(m, seen[m.spec]))
        return results

    def _opendkim(self, env: Env) -> list[Result]:
        from checks.opendkim import opendkim_results

        conf = self.options.opendkim_conf
        path = env.sysroot / (conf or "/etc/opendkim.conf").lstrip("/")
        if conf is None and not path.exists():
            return []
        return opendkim_results(self, path, env.sysroot)

    def _rspamd(self, env: Env) -> list[Result]:
        from checks.rspamd import rspamd_results

        conf = self.options.rspamd_conf_dir
        path = env.sysroot / (conf or "/etc/rspamd").lstrip("/")
        if conf is None and not path.is_dir():
            return []
        return rspamd_results(self, path, self.options.connect_timeout)

    def _postconf(self, env: Env, names: list[str]) -> list[str]:
        o = self.options
        argv = ["postconf", *(["-c", o.postfix_config_dir] if o.postfix_config_dir else []),
                "-h", *names]
        out = env.commands.run(argv, timeout=min(10.0, o.timeout)).stdout
        return [ln.strip() for ln in [*out.splitlines(), *[""] * len(names)][:len(names)]]

    def _judge(self, m: Milter, got: Any) -> Result:
        target = f"{m.source}:{m.spec}"
        setting = f"{m.source} = {m.spec} (default_action {m.default_action})"
        if isinstance(got, Exception):
            why = getattr(got, "strerror", None) or str(got) or type(got).__name__
            return self.result(Status.CRIT, f"milter {m.spec} does not answer: {why}"[:300],
                               target=target, details=setting,
                               remedy=f"start the milter listening on {m.spec} (e.g. "
                               "systemctl restart opendkim), or remove it from "
                               f"{m.source} (postconf -e), then postfix reload")
        version, actions, protocol = got
        adds = bool(actions & (SMFIF_ADDHDRS | SMFIF_INSHEADER | SMFIF_CHGHDRS))
        details = f"{setting}\nnegotiated: version {version}, actions 0x{actions:x}, " \
            f"protocol 0x{protocol:x}" + (" (adds headers: signs or stamps)" if adds else "")
        if adds and m.default_action == "accept":
            return self.result(Status.WARN, f"milter {m.spec} answers, but it adds headers "
                               "(a signer) and default_action is accept: when it fails, mail "
                               "goes out unsigned without notice", target=target,
                               details=details, remedy="postconf -e "
                               "milter_default_action=tempfail (or give this entry "
                               "{ ..., default_action=tempfail }), then postfix reload")
        return self.result(Status.OK, f"milter {m.spec} answers (milter protocol "
                           f"version {version})", target=target, details=details)
