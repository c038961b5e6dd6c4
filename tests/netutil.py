"""Small network helpers shared by the test servers (no third-party imports)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port nothing listens on (barring a race with another process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
