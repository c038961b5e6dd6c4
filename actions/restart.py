"""The ``restart`` action: carries out the policy's restart decisions with systemd, without
fighting it. A unit systemd is restarting already (``activating``/``auto-restart``) is left to
systemd; one that hit its start limit is reset and started once more; otherwise
``systemctl restart``. Its budget, backoff and grace are the policy's (``[restart]``); this
action has no options of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from agent.env import Env
from agent.notify import Outcome
from agent.policy import Restart
from agent.system.commands import CommandError


class RestartAction:
    name: ClassVar[str] = "restart"
    Options: ClassVar[Any] = None

    @classmethod
    def create(cls, options: None, state_dir: Path, host: str) -> RestartAction:
        return cls()

    def carry_out(self, request: Restart, env: Env) -> Outcome:
        systemd = env.systemd
        try:
            [st] = systemd.show([request.unit])
            if st.active_state == "activating" and st.sub_state == "auto-restart":
                return Outcome("", declined="systemd is restarting it already; leaving it "
                               "to systemd")
            if st.start_limit_hit:
                # systemd gave up after its own restarts; say so, then try once more ourselves.
                return Outcome(systemd.reset_failed(request.unit) + " (start limit hit) && " +
                               systemd.start(request.unit))
            return Outcome(systemd.restart(request.unit))
        except CommandError as e:
            return Outcome(f"restart {request.unit}", error=str(e))
