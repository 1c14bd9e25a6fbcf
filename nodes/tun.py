"""TUN devices: open one with the TUNSETIFF ioctl (no library), non-blocking, without packet info.

The device is created in the calling process's namespace and then moved into the endpoint's
namespace (``ip link set DEV netns NS``); the file descriptor stays attached across the move, and
closing it removes the device (it is not persistent).
"""

from __future__ import annotations

import fcntl
import os
import struct

from orbitmesh.errors import RunError

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFNAMSIZ = 16


def open_tun(name: str) -> int:
    """Create TUN device ``name`` and return its non-blocking file descriptor."""
    if len(name.encode()) >= IFNAMSIZ:
        raise RunError(f"TUN name {name!r} is longer than {IFNAMSIZ - 1} characters")
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise RunError(f"cannot open {TUN_PATH}: {exc.strerror}; IP endpoints need the tun "
                       "module (modprobe tun) and root or CAP_NET_ADMIN") from exc
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError as exc:
        os.close(fd)
        raise RunError(f"TUNSETIFF {name}: {exc.strerror} (needs root or CAP_NET_ADMIN)") from exc
    return fd
