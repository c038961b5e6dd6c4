"""rspamd beyond its milter socket: the controller answers HTTP ``/ping`` (rspamc, the web UI
and learning go through it) and every redis server it is configured with answers ``PING`` over
the redis protocol (DMARC reports, greylisting, rate limits and Bayes live there). Part of the
milter check; addresses come from rspamd's configuration (override.d, then local.d, then the
shipped file), with rspamd's defaults (localhost:11334, localhost:6379) when it names none."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from agent.model import Result, Status

if TYPE_CHECKING:
    from agent.model import Check

DEFAULT_CONTROLLER = "localhost:11334"
DEFAULT_REDIS = "localhost:6379"
MAX_CONF = 256 * 1024
MAX_SERVERS = 8


def _setting(confdir: Path, name: str, keys: tuple[str, ...]) -> tuple[list[str], str]:
    """The values of the first of ``keys`` set in ``name``, looked up in override.d, local.d
    and the file itself (rspamd's order of precedence), and the file it came from."""
    for place in (confdir / "override.d" / name, confdir / "local.d" / name, confdir / name):
        try:
            with place.open("rb") as f:
                text = f.read(MAX_CONF).decode("utf-8", errors="replace")
        except OSError:
            continue
        text = re.sub(r"(?m)#.*$", "", text)
        for key in keys:
            values: list[str] = []
            for m in re.finditer(rf"(?m)^\s*{key}\s*=\s*(\[[^\]]*\]|\"[^\"]*\"|[^;\n]+)", text):
                raw = m.group(1)
                values += re.findall(r'"([^"]*)"', raw) or [raw.strip()]
            if values:
                return values, str(place)
    return [], ""


def _endpoints(values: list[str], default_port: int) -> list[str]:
    out = []
    for v in values:
        for raw in v.split(","):
            words = raw.split()  # "/run/x.sock mode=0660": the path
            if not words:
                continue
            item = words[0]
            if not item.startswith("/") and ":" not in item.strip("[]").replace("::", ""):
                item = f"{item}:{default_port}"
            out.append(item)
    return list(dict.fromkeys(out))[:MAX_SERVERS]


def _connect(where: str, timeout: float) -> socket.socket:
    if where.startswith("/"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(where)
        except OSError:
            s.close()
            raise
        return s
    host, _, port = where.rpartition(":")
    host = host.strip("[]")
    # a wildcard bind (*, *v4, 0.0.0.0) is reached on loopback
    host = "127.0.0.1" if host in ("*", "*v4", "", "localhost", "0.0.0.0") else host  # noqa: S104
    host = "::1" if host == "*v6" else host
    if not port.isdigit():
        raise ValueError(f"{where}: no port")
    return socket.create_connection((host, int(port)), timeout=timeout)


def _recv(s: socket.socket, limit: int = 4096) -> bytes:
    data = b""
    while len(data) < limit:
        chunk = s.recv(limit - len(data))
        if not chunk:
            break
        data += chunk
        if data.endswith(b"\r\n") and not data.startswith(b"HTTP"):
            break
    return data


def http_ping(where: str, timeout: float) -> str:
    """"" when ``where`` answers GET /ping with 200 and pong, else what it did."""
    with _connect(where, timeout) as s:
        s.sendall(b"GET /ping HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        reply = _recv(s)
    status = reply.split(b"\r\n", 1)[0].decode("latin-1", errors="replace")[:80]
    if not re.match(r"HTTP/1\.[01] 200\b", status):
        return f"answered {status or 'nothing'!r}, not 200"
    if b"pong" not in reply.split(b"\r\n\r\n", 1)[-1].lower():
        return "answered 200 without pong: not rspamd's controller"
    return ""


def redis_ping(where: str, password: str, timeout: float) -> str:
    """"" when the redis server answers PING with +PONG (after AUTH when a password is
    configured), else what it answered."""
    with _connect(where, timeout) as s:
        if password:
            pw = password.encode()
            s.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(pw), pw))
            reply = _recv(s, 512)
            if not reply.startswith(b"+OK"):
                return f"refused the configured password: {_line(reply)}"
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        reply = _recv(s, 512)
    if reply.startswith(b"+PONG"):
        return ""
    return f"answered {_line(reply)!r} to PING"


def _line(reply: bytes) -> str:
    return reply.split(b"\r\n", 1)[0].decode("utf-8", errors="replace")[:120] or "nothing"


def rspamd_results(check: Check, confdir: Path, timeout: float) -> list[Result]:
    out = []
    values, src = _setting(confdir, "worker-controller.inc", ("bind_socket",))
    for where in _endpoints(values or [DEFAULT_CONTROLLER], 11334):
        setting = f"bind_socket = {where} ({src or 'rspamd default'})"
        down = False
        try:
            why = http_ping(where, timeout)
        except (OSError, ValueError) as e:
            why = getattr(e, "strerror", None) or str(e) or type(e).__name__
            down = isinstance(e, OSError)  # nothing listens (or answers): rspamd is down
        if why and down:
            out.append(check.result(Status.CRIT, f"rspamd controller {where} does not "
                                    f"answer: {why}: rspamd is not running"[:300],
                                    f"rspamd:controller:{where}", details=setting,
                                    remedy="systemctl start rspamd; journalctl -u rspamd "
                                    "says why it stopped"))
        elif why:
            out.append(check.result(Status.WARN, f"rspamd controller {where} does not "
                                    f"answer /ping: {why}"[:300], f"rspamd:controller:{where}",
                                    details=setting, remedy="systemctl status rspamd; "
                                    "rspamc stat and the web UI need the controller"))
        else:
            out.append(check.result(Status.OK, f"rspamd controller {where} answers /ping",
                                    f"rspamd:controller:{where}", details=setting))
    values, src = _setting(confdir, "redis.conf", ("servers", "write_servers",
                                                   "read_servers"))
    pw_values, _ = _setting(confdir, "redis.conf", ("password",))
    password = pw_values[0] if pw_values else ""
    for where in _endpoints(values or [DEFAULT_REDIS], 6379):
        setting = f"servers = {where} ({src or 'rspamd default'})" + \
            (", with a password" if password else "")
        try:
            why = redis_ping(where, password, timeout)
        except (OSError, ValueError) as e:
            why = getattr(e, "strerror", None) or str(e) or type(e).__name__
        if why:
            out.append(check.result(Status.CRIT, f"rspamd's redis {where} does not answer: "
                                    f"{why}"[:300], f"rspamd:redis:{where}", details=setting,
                                    remedy="start redis (systemctl start redis) or fix "
                                    f"servers/password in {src or confdir / 'local.d/redis.conf'}"
                                    ": DMARC reports, greylisting and rate limits need it"))
        else:
            out.append(check.result(Status.OK, f"rspamd's redis {where} answers PING",
                                    f"rspamd:redis:{where}", details=setting))
    return out
