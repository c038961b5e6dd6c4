"""The milter check's rspamd part against Debian's rspamd and redis-server on loopback: rspamd
from a copy of the package's /etc/rspamd with local.d files of its own (controller, normal and
milter-mode proxy workers on free loopback ports; redis with a password), as an administrator
would configure it. The check must find the controller answering /ping, redis answering PING
after AUTH, and the proxy answering the milter negotiation inside a Postfix chain read by the
real postconf; a wrong redis password in rspamd's config is said as such (redis's own
WRONGPASS); a stopped rspamd and redis are CRIT. rspamd takes ~20 s to load (slow, root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from agent.config import Config
from agent.env import Env
from agent.model import Status
from checks.milters import MilterCheck, MilterOptions
from tests.integration.test_milters import postfix_dir
from tests.netutil import free_port, stop_process

RSPAMD = shutil.which("rspamd")
REDIS = shutil.which("redis-server")
pytestmark = [
    pytest.mark.slow, pytest.mark.root,
    pytest.mark.skipif(RSPAMD is None or REDIS is None or not Path("/etc/rspamd").is_dir(),
                       reason="needs rspamd and redis-server (apt-get install rspamd "
                       "redis-server)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="rspamd runs as root here (-u root -i)"),
]
PASSWORD = "s3cret-redis"


def _stop(proc: subprocess.Popen) -> None:
    stop_process(proc, timeout=15)


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    d = tmp_path_factory.mktemp("rspamd")
    conf = d / "conf"
    shutil.copytree("/etc/rspamd", conf)
    for sub in ("run", "db", "log", "redis"):
        (d / sub).mkdir()
    ports = {name: free_port() for name in ("controller", "normal", "proxy", "redis")}
    (conf / "local.d/worker-controller.inc").write_text(
        f'bind_socket = "127.0.0.1:{ports["controller"]}";\n')
    (conf / "local.d/worker-normal.inc").write_text(
        f'bind_socket = "127.0.0.1:{ports["normal"]}";\n')
    (conf / "local.d/worker-proxy.inc").write_text(
        f'bind_socket = "127.0.0.1:{ports["proxy"]}";\nmilter = yes;\nself_scan = yes;\n')
    (conf / "local.d/redis.conf").write_text(
        f'servers = "127.0.0.1:{ports["redis"]}";\npassword = "{PASSWORD}";\n')
    (conf / "local.d/logging.inc").write_text(
        f'type = "file";\nfilename = "{d}/log/rspamd.log";\nlevel = "notice";\n')
    redis = subprocess.Popen([REDIS, "--port", str(ports["redis"]), "--bind", "127.0.0.1",
                              "--requirepass", PASSWORD, "--save", "", "--appendonly", "no",
                              "--dir", str(d / "redis")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rspamd = subprocess.Popen(
        [RSPAMD, "-f", "-i", "-u", "root", "-g", "root", "-c", str(conf / "rspamd.conf"),
         "--var", f"CONFDIR={conf}", "--var", f"LOCAL_CONFDIR={conf}",
         "--var", f"RUNDIR={d}/run", "--var", f"DBDIR={d}/db", "--var", f"LOGDIR={d}/log"],
        stdout=(d / "rspamd.out").open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        url = f"http://127.0.0.1:{ports['controller']}/ping"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1) as reply:
                    if b"pong" in reply.read():
                        break
            except OSError:
                pass
            assert rspamd.poll() is None and time.monotonic() < deadline, \
                (d / "rspamd.out").read_text(errors="replace")[-2000:]
            time.sleep(0.25)
        yield {"conf": conf, "ports": ports, "rspamd": rspamd, "redis": redis, "dir": d}
    finally:
        _stop(rspamd)
        _stop(redis)


def run(tmp_path, conf: Path, milters: str = "") -> dict:
    # tempfail: with accept, a milter that adds headers is a WARN (mail unsigned silently)
    pf = postfix_dir(tmp_path, milters, non_smtpd="", default="tempfail")
    options = MilterOptions(postfix_config_dir=pf,
                            rspamd_conf_dir=str(conf), connect_timeout=3.0)
    env = Env(Config("<test>"))
    [check] = MilterCheck.instances(options, env)
    return {r.check: r for r in check.run(env)}


def test_real_rspamd_controller_redis_and_milter_answer(bed, tmp_path):
    p = bed["ports"]
    got = run(tmp_path, bed["conf"], f"inet:127.0.0.1:{p['proxy']}")
    c = got[f"milter:rspamd:controller:127.0.0.1:{p['controller']}"]
    assert c.status is Status.OK and "answers /ping" in c.summary, c
    assert "local.d/worker-controller.inc" in c.details
    r = got[f"milter:rspamd:redis:127.0.0.1:{p['redis']}"]
    assert r.status is Status.OK and "answers PING" in r.summary, r
    assert "with a password" in r.details and PASSWORD not in r.details
    m = got[f"milter:smtpd_milters:inet:127.0.0.1:{p['proxy']}"]
    assert m.status is Status.OK and "answers (milter protocol" in m.summary, m


def test_wrong_redis_password_in_rspamds_config(bed, tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(bed["conf"], conf)
    (conf / "local.d/redis.conf").write_text(
        f'servers = "127.0.0.1:{bed["ports"]["redis"]}";\npassword = "not-the-password";\n')
    r = run(tmp_path, conf)[f"milter:rspamd:redis:127.0.0.1:{bed['ports']['redis']}"]
    assert r.status is Status.CRIT, r
    assert "refused the configured password: -WRONGPASS" in r.summary, r.summary
    assert "not-the-password" not in r.summary + r.details


def test_stopped_rspamd_and_redis_are_critical(bed, tmp_path):
    """Last in this module: it stops the shared servers."""
    p = bed["ports"]
    _stop(bed["rspamd"])
    _stop(bed["redis"])
    got = run(tmp_path, bed["conf"], f"inet:127.0.0.1:{p['proxy']}")
    c = got[f"milter:rspamd:controller:127.0.0.1:{p['controller']}"]
    assert c.status is Status.CRIT and c.summary.endswith("rspamd is not running"), c
    assert "Connection refused" in c.summary and "systemctl start rspamd" in c.remedy
    r = got[f"milter:rspamd:redis:127.0.0.1:{p['redis']}"]
    assert r.status is Status.CRIT and "Connection refused" in r.summary
    assert got[f"milter:smtpd_milters:inet:127.0.0.1:{p['proxy']}"].status is Status.CRIT
