"""Push notification of systemd unit state changes over D-Bus.

The daemon must notice a unit entering ``failed`` within seconds without forking
``systemctl`` every second.  ``UnitWatcher`` subscribes to systemd's
``PropertiesChanged`` signals on the system bus (jeepney, blocking I/O in a daemon
thread) and calls ``on_change(unit_id, active_state)`` for every ActiveState change, and
``on_change("", "connected")`` after each (re)connect.
It reconnects with backoff on its own; while ``connected`` is False the daemon should
poll instead (and poll once after a reconnect: changes in the gap are not replayed).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any

from jeepney import (
    DBusAddress,
    HeaderFields,
    MatchRule,
    MessageType,
    message_bus,
    new_method_call,
)
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from jeepney.wrappers import unwrap_msg

log = logging.getLogger(__name__)

UNIT_PATH = "/org/freedesktop/systemd1/unit"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
SYSTEMD = DBusAddress("/org/freedesktop/systemd1", bus_name="org.freedesktop.systemd1",
                      interface="org.freedesktop.systemd1.Manager")
RULE = MatchRule(type="signal", sender="org.freedesktop.systemd1", interface=PROPS_IFACE,
                 member="PropertiesChanged", path_namespace=UNIT_PATH)
POLL = 1.0  # receive timeout: how often the thread checks its stop flag
CALL_TIMEOUT = 5.0
BACKOFF_MIN, BACKOFF_MAX = 1.0, 30.0

_ESCAPE = re.compile(rb"_([0-9a-fA-F]{2})")


def unescape_unit_path(path: str) -> str:
    """``/org/freedesktop/systemd1/unit/postfix_40_2d_2eservice`` -> ``postfix@-.service``
    (systemd escapes every byte but ``[A-Za-z0-9]`` as ``_xx``; ``_`` alone is "")."""
    label = path.rsplit("/", 1)[-1]
    if label == "_":
        return ""
    raw = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), label.encode())
    return raw.decode("utf-8", errors="replace")


class UnitWatcher:
    """Calls ``on_change(unit_id, active_state)`` from a background thread for every
    ActiveState change systemd signals.  ``bus_address`` (a D-Bus address such as
    ``unix:path=/run/dbus/system_bus_socket``) defaults to the system bus, which honours
    ``DBUS_SYSTEM_BUS_ADDRESS``."""

    def __init__(self, on_change: Callable[[str, str], None],
                 bus_address: str | None = None) -> None:
        self._on_change = on_change
        self._bus = bus_address or "SYSTEM"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = False
        self.error = ""  # why we are not connected; "" while connected or not yet tried

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="unitwatch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Signal the thread to end (it notices within ``POLL`` s) and join it."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("unit watcher thread did not stop within %.1f s", timeout)

    def _run(self) -> None:
        delay = BACKOFF_MIN
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except Exception as exc:  # any failure to connect: retry with backoff
                self._failed(exc, "cannot connect to")
            else:
                delay = BACKOFF_MIN
                self.connected, self.error = True, ""
                log.info("watching systemd units on %s", self._bus)
                self._call("", "connected")  # changes before now were not seen: look once
                try:
                    self._receive(conn)
                except Exception as exc:  # a dropped connection or garbage on the wire
                    self._failed(exc, "lost connection to")
                finally:
                    self.connected = False
                    conn.close()
            self._stop.wait(delay)
            delay = min(delay * 2, BACKOFF_MAX)
        log.debug("unit watcher stopped")

    def _failed(self, exc: Exception, what: str) -> None:
        error = f"{what} {self._bus}: {type(exc).__name__}: {exc}"
        if error != self.error:  # log state changes, not every retry
            log.warning("unit watcher %s; retrying with backoff", error)
        self.error = error

    def _connect(self) -> DBusConnection:
        conn = open_dbus_connection(bus=self._bus)
        try:
            unwrap_msg(conn.send_and_get_reply(message_bus.AddMatch(RULE),
                                               timeout=CALL_TIMEOUT))
            unwrap_msg(conn.send_and_get_reply(new_method_call(SYSTEMD, "Subscribe"),
                                               timeout=CALL_TIMEOUT))
        except BaseException:
            conn.close()
            raise
        return conn

    def _receive(self, conn: DBusConnection) -> None:
        while not self._stop.is_set():
            try:
                msg = conn.receive(timeout=POLL)
            except TimeoutError:
                continue
            fields = msg.header.fields
            if (msg.header.message_type is MessageType.signal
                    and fields.get(HeaderFields.interface) == PROPS_IFACE
                    and fields.get(HeaderFields.member) == "PropertiesChanged"):
                self._dispatch(fields.get(HeaderFields.path, ""), msg.body)

    def _dispatch(self, path: str, body: tuple[Any, ...]) -> None:
        if len(body) < 2 or body[0] != UNIT_IFACE or not path.startswith(UNIT_PATH + "/"):
            return
        state = body[1].get("ActiveState")  # a variant: (signature, value)
        if state is None:
            return
        self._call(unescape_unit_path(path), state[1])

    def _call(self, unit: str, state: str) -> None:
        try:
            self._on_change(unit, state)
        except Exception:
            log.exception("unit watcher callback failed for %s -> %s", unit, state)
