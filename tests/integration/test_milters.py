"""The milter check against a real OpenDKIM (Debian's) on a loopback port, a dead unix socket,
and a TCP server that is no milter, with the chain read by the real postconf from a throwaway
Postfix configuration directory; rspamd's controller and redis as a loopback HTTP server
answering /ping and a loopback redis-protocol server (AUTH, PING)."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import socketserver
import threading
import time
from pathlib import Path

import pytest

from agent.config import Config
from agent.env import Env
from agent.model import Status
from checks.milters import MilterCheck, MilterOptions, parse_milters
from tests import opendkimbed
from tests.netutil import free_port

OPENDKIM = opendkimbed.OPENDKIM
pytestmark = pytest.mark.skipif(
    OPENDKIM is None or shutil.which("postconf", path="/usr/sbin:/usr/bin") is None,
    reason="needs opendkim, opendkim-tools and postfix (apt-get install opendkim "
    "opendkim-tools postfix)")


@pytest.fixture(scope="module")
def opendkim(tmp_path_factory):
    port = free_port()
    with opendkimbed.opendkim(tmp_path_factory.mktemp("opendkim"), f"inet:{port}@127.0.0.1"):
        yield port


@pytest.fixture
def not_a_milter():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            c.sendall(b"220 this is SMTP, not a milter\r\n" * 4)
            c.close()

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()


def postfix_dir(tmp_path, smtpd: str, non_smtpd: str = "$smtpd_milters",
                default: str = "accept"):
    d = tmp_path / "postfix"
    (d / "queue").mkdir(parents=True, exist_ok=True)
    (d / "master.cf").write_text("")  # postconf warns (and sleeps a second) without it
    (d / "main.cf").write_text(f"queue_directory = {d}/queue\nsmtpd_milters = {smtpd}\n"
                               f"non_smtpd_milters = {non_smtpd}\n"
                               f"milter_default_action = {default}\ncompatibility_level = 3.6\n")
    # Postfix waits ~2 s before reading a main.cf modified this very second
    past = time.time() - 10
    os.utime(d / "main.cf", (past, past))
    return str(d)


def run(config_dir: str) -> dict:
    """The check on ``config_dir`` alone: an empty system tree, so that this machine's own
    /etc/opendkim.conf or /etc/rspamd (the packages the tests install) add nothing."""
    options = MilterOptions(postfix_config_dir=config_dir, connect_timeout=2.0)
    root = Path(config_dir).parent / "empty-root"
    root.mkdir(exist_ok=True)
    env = Env(Config("<test>"), sysroot=root)
    [check] = MilterCheck.instances(options, env)
    return {r.check: r for r in check.run(env)}


def test_parse_milters():
    got = parse_milters("inet:127.0.0.1:8891, { unix:/run/x.sock, default_action=tempfail } "
                        "local:/y", "accept", "smtpd_milters")
    assert [(m.spec, m.default_action) for m in got] == [
        ("inet:127.0.0.1:8891", "accept"), ("unix:/run/x.sock", "tempfail"), ("local:/y", "accept")]


def test_opendkim_negotiates_and_accept_on_a_signer_warns(tmp_path, opendkim):
    spec = f"inet:127.0.0.1:{opendkim}"
    r = run(postfix_dir(tmp_path, spec))
    assert set(r) == {f"milter:smtpd_milters:{spec}", f"milter:non_smtpd_milters:{spec}"}
    one = r[f"milter:smtpd_milters:{spec}"]
    assert one.status is Status.WARN and "adds headers" in one.summary, one
    assert "negotiated: version 6" in one.details
    assert "milter_default_action=tempfail" in one.remedy


def test_signer_with_tempfail_is_ok(tmp_path, opendkim):
    spec = f"inet:127.0.0.1:{opendkim}"
    r = run(postfix_dir(tmp_path, f"{{ {spec}, default_action=tempfail }}", non_smtpd="",
                        default="accept"))
    [one] = r.values()
    assert one.status is Status.OK and "answers (milter protocol version 6)" in one.summary


def test_dead_socket_and_a_non_milter_are_critical(tmp_path, not_a_milter):
    dead = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(dead))
    s.close()  # the socket file stays, nobody listens: connection refused
    specs = [f"unix:{dead}", f"inet:127.0.0.1:{not_a_milter}", "inet:127.0.0.1:1",
             "tcp:nonsense"]
    r = run(postfix_dir(tmp_path, ", ".join(specs), non_smtpd=""))
    got = {k.split(":", 2)[2]: v for k, v in r.items()}
    assert all(v.status is Status.CRIT for v in got.values()), got
    assert "Connection refused" in got[specs[0]].summary
    assert "is not an option negotiation" in got[specs[1]].summary
    assert "not inet:host:port or unix:/path" in got[specs[3]].summary
    assert "systemctl restart opendkim" in got[specs[0]].remedy


def test_chrooted_unix_socket_is_found_in_the_queue_directory(tmp_path, opendkim):
    d = postfix_dir(tmp_path, "unix:/opendkim/opendkim.sock", non_smtpd="")
    sock_dir = tmp_path / "postfix" / "queue" / "opendkim"
    sock_dir.mkdir()
    # relay the chroot socket to the running opendkim, as a real socket file would be
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(sock_dir / "opendkim.sock"))
    srv.listen(1)

    def relay():
        c, _ = srv.accept()
        up = socket.create_connection(("127.0.0.1", opendkim))
        c.settimeout(5)
        up.settimeout(5)
        try:
            up.sendall(c.recv(4096))
            c.sendall(up.recv(4096))
        finally:
            c.close()
            up.close()

    t = threading.Thread(target=relay, daemon=True)
    t.start()
    [one] = run(d).values()
    srv.close()
    assert one.status is Status.WARN and "adds headers" in one.summary, one


def test_no_milters_is_said(tmp_path):
    [one] = run(postfix_dir(tmp_path, "", non_smtpd="")).values()
    assert one.status is Status.OK and one.summary == "no milters configured in Postfix"


def test_postfix_installed_but_not_configured_yields_nothing(tmp_path):
    (tmp_path / "etc/postfix").mkdir(parents=True)  # the package's directory, no main.cf
    env = Env(Config("<test>"), sysroot=tmp_path)
    [check] = MilterCheck.instances(MilterOptions(), env)
    assert list(check.run(env)) == []


def _tables(tmp_path, signing: str, kind: str = "refile", mode: int = 0o600):
    d = tmp_path / "dkim"
    d.mkdir()
    for sel in ("s1", "s2"):
        (d / f"{sel}.private").write_text("not read: only its mode and existence count\n")
        os.chmod(d / f"{sel}.private", mode)
    (d / "KeyTable").write_text(f"k1 example.test:s1:{d}/s1.private\n"
                                f"k2 other.test:s2:{d}/s2.private\n"
                                f"gone example.test:s3:{d}/missing.private\n")
    (d / "SigningTable").write_text(signing)
    (d / "opendkim.conf").write_text(f"KeyTable {d}/KeyTable\n"
                                     f"SigningTable {kind}:{d}/SigningTable\n")
    return str(d / "opendkim.conf")


def dkim_result(tmp_path, conf):
    options = MilterOptions(postfix_config_dir=postfix_dir(tmp_path, "", non_smtpd=""),
                            opendkim_conf=conf)
    [check] = MilterCheck.instances(options, Env(Config("<test>")))
    return {r.check: r for r in check.run(Env(Config("<test>")))}["milter:opendkim"]


def test_opendkim_tables_consistent_with_wildcards(tmp_path):
    conf = _tables(tmp_path, "*@example.test k1\n*@*.other.test k2\nx@other.test k2\n")
    r = dkim_result(tmp_path, conf)
    # the KeyTable's "gone" entry points at a missing file
    assert r.status is Status.CRIT and "missing.private: No such file" in r.summary
    (tmp_path / "dkim" / "KeyTable").write_text(
        f"k1 example.test:s1:{tmp_path}/dkim/s1.private\n"
        f"k2 other.test:s2:{tmp_path}/dkim/s2.private\n")
    r = dkim_result(tmp_path, conf)
    assert r.status is Status.OK, r
    assert r.summary == "OpenDKIM tables consistent: 3 rule(s), keys for example.test, other.test"


def test_opendkim_tables_broken(tmp_path):
    conf = _tables(tmp_path, "*@example.test k1\nx@other.test nokey\n", kind="file",
                   mode=0o644)
    r = dkim_result(tmp_path, conf)
    assert r.status is Status.CRIT
    details = r.details
    assert "rule x@other.test names key nokey, which the KeyTable does not have" in details
    assert "has a wildcard but the table is file:" in details and "refile:" in details
    assert "s1.private is mode 0644: readable beyond its owner" in details
    assert "systemctl restart opendkim" in r.remedy


# --- rspamd's controller and redis -------------------------------------------------------

class Resp(socketserver.StreamRequestHandler):
    """A redis-protocol server: AUTH against ``password``, PING answered +PONG."""

    password = ""

    def handle(self):
        authed = not self.password
        while True:
            head = self.rfile.readline()
            if not head.startswith(b"*"):
                return
            args = []
            for _ in range(int(head[1:])):
                n = int(self.rfile.readline()[1:])
                args.append(self.rfile.read(n + 2)[:-2])
            cmd = args[0].upper()
            if cmd == b"AUTH" and not self.password:  # what redis says then
                self.wfile.write(b"-ERR AUTH <password> called without any password "
                                 b"configured for the default user.\r\n")
            elif cmd == b"AUTH":
                authed = args[-1].decode() == self.password
                self.wfile.write(b"+OK\r\n" if authed else
                                 b"-WRONGPASS invalid username-password pair\r\n")
            elif not authed:
                self.wfile.write(b"-NOAUTH Authentication required.\r\n")
            elif cmd == b"PING":
                self.wfile.write(b"+PONG\r\n")
            else:
                self.wfile.write(b"-ERR unknown command\r\n")


class Pong(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"pong\r\n" if self.path == "/ping" else b"not found"
        self.send_response(200 if self.path == "/ping" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def servers():
    class Auth(Resp):
        password = "s3cret"
    started = []
    for server in (socketserver.ThreadingTCPServer(("127.0.0.1", 0), Resp),
                   socketserver.ThreadingTCPServer(("127.0.0.1", 0), Auth),
                   http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pong),
                   http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                   http.server.SimpleHTTPRequestHandler)):
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        started.append(server)
    yield [s.server_address[1] for s in started]
    for s in started:
        s.shutdown()
        s.server_close()


def rspamd_conf(tmp_path, controller: str, redis: str, local_redis: str = ""):
    d = tmp_path / "rspamd"
    (d / "local.d").mkdir(parents=True)
    (d / "worker-controller.inc").write_text(
        '# shipped\nbind_socket = "localhost:1";\ncount = 1;\n')
    (d / "local.d/worker-controller.inc").write_text(
        f'bind_socket = "{controller}";\npassword = "$2$xyz";\n')
    (d / "local.d/redis.conf").write_text(redis)
    return str(d)


def rspamd_run(postfix: str, rspamd: str) -> dict:
    options = MilterOptions(postfix_config_dir=postfix, rspamd_conf_dir=rspamd,
                            connect_timeout=2.0)
    [check] = MilterCheck.instances(options, Env(Config("<test>")))
    return {r.check: r for r in check.run(Env(Config("<test>")))}


def test_rspamd_controller_and_redis_answering_are_ok(tmp_path, servers):
    _, auth, pong, _ = servers
    conf = rspamd_conf(tmp_path, f"localhost:{pong}",
                       f'# redis for DMARC\nservers = "localhost:{auth}";\n'
                       'password = "s3cret";\n')
    got = rspamd_run(postfix_dir(tmp_path, "", non_smtpd=""), conf)
    c = got[f"milter:rspamd:controller:localhost:{pong}"]
    assert c.status is Status.OK and c.summary == f"rspamd controller localhost:{pong} " \
        "answers /ping"
    assert "local.d/worker-controller.inc" in c.details
    r = got[f"milter:rspamd:redis:localhost:{auth}"]
    assert r.status is Status.OK and "answers PING" in r.summary, r
    assert "with a password" in r.details and "s3cret" not in r.details


def test_rspamd_dead_or_wrong_parts_are_named(tmp_path, servers):
    plain, auth, _, other_http = servers
    dead = free_port()
    conf = rspamd_conf(tmp_path, f"127.0.0.1:{other_http}",
                       f'servers = [ "127.0.0.1:{plain}", "127.0.0.1:{auth},127.0.0.1:{dead}" ];\n')
    got = rspamd_run(postfix_dir(tmp_path, "", non_smtpd=""), conf)
    c = got[f"milter:rspamd:controller:127.0.0.1:{other_http}"]
    assert c.status is Status.WARN and "answered 'HTTP/1.0 404 File not found'" in c.summary, c
    assert got[f"milter:rspamd:redis:127.0.0.1:{plain}"].status is Status.OK
    a = got[f"milter:rspamd:redis:127.0.0.1:{auth}"]
    assert a.status is Status.CRIT and a.summary.endswith(
        "answered '-NOAUTH Authentication required.' to PING"), a
    d = got[f"milter:rspamd:redis:127.0.0.1:{dead}"]
    assert d.status is Status.CRIT and "Connection refused" in d.summary
    assert "local.d/redis.conf" in d.remedy
    # a wrong password is said as such
    (tmp_path / "rspamd/local.d/redis.conf").write_text(
        f'servers = "127.0.0.1:{auth}";\npassword = "wrong";\n')
    got = rspamd_run(postfix_dir(tmp_path, "", non_smtpd=""), conf)
    a = got[f"milter:rspamd:redis:127.0.0.1:{auth}"]
    assert a.status is Status.CRIT and "refused the configured password: -WRONGPASS" in \
        a.summary, a


def test_rspamd_defaults_when_its_config_names_nothing(tmp_path):
    d = tmp_path / "rspamd"
    d.mkdir()
    got = rspamd_run(postfix_dir(tmp_path, "", non_smtpd=""), str(d))
    assert {"milter:rspamd:controller:localhost:11334", "milter:rspamd:redis:localhost:6379"} \
        <= set(got)
