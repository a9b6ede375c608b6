"""--offline: make any non-loopback connection attempt fail loudly instead of reaching out."""

from __future__ import annotations

import socket

_LOOPBACK = ("127.", "localhost", "::1")


def forbid_network() -> None:
    original = socket.socket.connect

    def guarded(self: socket.socket, address) -> None:  # type: ignore[no-untyped-def]
        host = address[0] if isinstance(address, tuple) else str(address)
        if (
            isinstance(host, str)
            and not host.startswith(_LOOPBACK)
            and self.family != socket.AF_UNIX
        ):
            raise ConnectionRefusedError(f"--offline: refused a connection to {host}")
        return original(self, address)

    socket.socket.connect = guarded  # type: ignore[method-assign]
