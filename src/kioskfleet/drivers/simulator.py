"""Device simulators: the device side of a protocol, in memory or on a pseudo-terminal.

A simulator consumes the bytes a host writes and returns the bytes the device would send
back. :class:`SimulatorTransport` puts one behind the :class:`~kioskfleet.drivers.base.Transport`
interface for tests and the fleet simulator; :func:`serve_pty` puts it on a real pty for
``kioskfleet device simulate`` and the contract tests.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import termios
import threading
import time
import tty
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import ClassVar


class DeviceSimulator(ABC):
    """The device end of a serial link. Subclasses parse host bytes and answer like the device.

    ``FAULTS`` names the fault switches ``kioskfleet device simulate --fault`` accepts, with a
    one-line description each; :meth:`set_fault` turns one on.
    """

    FAULTS: ClassVar[dict[str, str]] = {}

    @abstractmethod
    def receive(self, data: bytes) -> bytes:
        """Consume bytes written by the host; return the bytes the device sends back."""

    def unsolicited(self) -> bytes:
        """Bytes the device sends on its own (e.g. ESC/POS Automatic Status Back)."""
        return b""

    def set_fault(self, name: str) -> None:
        """Switch on the named fault.

        Raises:
            ValueError: the simulator does not know that fault.
        """
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(sorted(self.FAULTS))}")


class SimulatorTransport:
    """An in-memory port wired to a simulator (thread-safe, honours ``timeout`` on read)."""

    def __init__(self, simulator: DeviceSimulator, timeout: float | None = 0.5) -> None:
        self.simulator = simulator
        self.timeout = timeout
        self.is_open = True
        self._buffer = bytearray()
        self._cond = threading.Condition()
        #: everything the host wrote, for tests that assert on bytes on the wire
        self.written = bytearray()

    def write(self, data: bytes, /) -> int:
        if not self.is_open:
            raise OSError("port closed")
        reply = self.simulator.receive(bytes(data))
        with self._cond:
            self.written += data
            self._buffer += reply
            self._cond.notify_all()
        return len(data)

    def read(self, size: int = 1) -> bytes:
        if not self.is_open:
            raise OSError("port closed")
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        with self._cond:
            extra = self.simulator.unsolicited()
            if extra:
                self._buffer += extra
            while not self._buffer:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return b""
                self._cond.wait(remaining)
            out = bytes(self._buffer[:size])
            del self._buffer[:size]
            return out

    def reset_input_buffer(self) -> None:
        with self._cond:
            self._buffer.clear()

    def close(self) -> None:
        self.is_open = False


class PtyServer:
    """Runs a simulator on a pseudo-terminal until stopped.

    The server keeps its own handle on the slave side open, so a host that closes and reopens
    the port (a probe, an unplug/replug test) never makes the master side fail.
    """

    def __init__(self, simulator: DeviceSimulator, link: str | None = None) -> None:
        self.simulator = simulator
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave, termios.TCSANOW)
        self.port = os.ttyname(self._slave)
        self.link = link
        if link:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            os.symlink(self.port, link)
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        """Answer the host until :meth:`stop`."""
        try:
            while True:
                ready, _, _ = select.select([self._master, self._stop_r], [], [], 0.05)
                if self._stop_r in ready:
                    return
                if self._master in ready:
                    try:
                        data = os.read(self._master, 4096)
                    except OSError:
                        continue
                    out = self.simulator.receive(data)
                    if out:
                        os.write(self._master, out)
                extra = self.simulator.unsolicited()
                if extra:
                    os.write(self._master, extra)
        finally:
            self._close()

    def start(self) -> PtyServer:
        """Serve in a background thread (tests)."""
        self._thread = threading.Thread(target=self.serve_forever, name="pty-sim", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the pty."""
        os.write(self._stop_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _close(self) -> None:
        for fd in (self._master, self._slave, self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.link:
            with contextlib.suppress(FileNotFoundError):
                Path(self.link).unlink()


def serve_until_sigterm(
    simulator: DeviceSimulator, link: str | None, announce: Callable[[str], None]
) -> None:
    """``kioskfleet device simulate``: announce the port, serve until SIGTERM or SIGINT."""
    server = PtyServer(simulator, link)

    def _stop(signum: int, frame: FrameType | None) -> None:
        os.write(server._stop_w, b"x")

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    announce(server.port)
    server.serve_forever()
