"""The systemd notification protocol (sd_notify), spoken directly over NOTIFY_SOCKET: READY=1
once start-up recovery is done and the port listens, STOPPING=1 on shutdown, STATUS= lines for
`systemctl status`, and WATCHDOG=1 keep-alives while the event loop is healthy."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

log = logging.getLogger("wondercraft.notify")


class Notifier:
    """Sends datagrams to the socket systemd named; does nothing outside systemd."""

    def __init__(self, address: str | None, watchdog_interval_s: float | None = None) -> None:
        self.address = self._parse(address)
        self.watchdog_interval_s = watchdog_interval_s
        self._sock: socket.socket | None = None
        self._watchdog: asyncio.Task | None = None

    @staticmethod
    def _parse(address: str | None) -> str | bytes | None:
        if not address:
            return None
        if address.startswith("@"):
            # An abstract socket: '@' stands for the leading NUL byte.
            return b"\0" + address[1:].encode()
        if address.startswith("/"):
            return address
        # vsock and other address families are not used for services on the host itself.
        log.warning(
            "NOTIFY_SOCKET ignored", extra={"address": address, "expected": "a path or @abstract name"}
        )
        return None

    @classmethod
    def from_environment(cls) -> Notifier:
        """Takes NOTIFY_SOCKET (and the watchdog variables) out of the environment, so that the
        processes the service starts (launchers, sandboxes) cannot speak for it."""
        address = os.environ.pop("NOTIFY_SOCKET", None)
        usec = os.environ.pop("WATCHDOG_USEC", None)
        pid = os.environ.pop("WATCHDOG_PID", None)
        interval = None
        if usec and usec.isdigit() and int(usec) > 0 and (pid is None or pid == str(os.getpid())):
            # Ping at half the deadline, as sd_watchdog_enabled(3) advises.
            interval = int(usec) / 2e6
        return cls(address, interval)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Sends one datagram of newline-separated VAR=value lines; False when not delivered."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(assignments).encode(), self.address)
        except OSError as exc:
            # systemd may have gone away (daemon-reexec) or never listened: not fatal to serving.
            log.warning("sd_notify failed", extra={"error": str(exc), "notification": assignments[0]})
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def start_watchdog(self) -> None:
        """Keep-alives from the event loop itself: a loop stuck for the whole WatchdogSec gets the
        service restarted (Restart=on-failure)."""
        if self.address is None or not self.watchdog_interval_s:
            return
        interval = self.watchdog_interval_s

        async def ping() -> None:
            while True:
                self.send("WATCHDOG=1")
                await asyncio.sleep(interval)

        self._watchdog = asyncio.get_running_loop().create_task(ping(), name="sd-watchdog")

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
