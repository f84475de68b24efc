"""Loaded by every Python process started with this folder on PYTHONPATH (see tests/test_offline.py).

Refuses, and records, any connection or name lookup that leaves the machine. Loopback is allowed
(the web app talks to itself).
"""

import os
import socket

_LOG = os.environ.get("RAG_NETGUARD_LOG", "")
_LOCAL = {"127.0.0.1", "::1", "localhost", "0.0.0.0", ""}


def _record(what: str) -> None:
    if _LOG:
        with open(_LOG, "a", encoding="utf-8") as f:
            f.write(what + "\n")


def _is_local(host) -> bool:
    host = str(host)
    return host in _LOCAL or host.startswith("127.")


_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def _guarded(original):
    def connect(self, address):
        if isinstance(address, tuple) and not _is_local(address[0]):
            _record(f"connect {address!r}")
            raise OSError(101, "network is unreachable (blocked by the offline test)")
        return original(self, address)

    return connect


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host is not None and not _is_local(host if isinstance(host, str) else host.decode()):
        _record(f"getaddrinfo {host!r}")
        raise socket.gaierror(-3, "name lookup blocked by the offline test")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guarded(_connect)
socket.socket.connect_ex = _guarded(_connect_ex)
socket.getaddrinfo = _guarded_getaddrinfo
