"""Loaded by every Python process started with this folder on PYTHONPATH (see tests/test_offline.py).

Refuses, and records, any attempt to leave the machine made through Python's socket module: a connection
(TCP or UDP `connect`, `connect_ex`), a datagram sent to an address (`sendto`, `sendmsg`), and a name lookup
(`getaddrinfo`, `gethostbyname`, `gethostbyname_ex`). Loopback is allowed (the web app talks to itself).

Native code that opens its own sockets is not seen here: tests/test_offline.py also runs every entry point
inside a network namespace, where only loopback exists.
"""

import os
import socket

_LOG = os.environ.get("RAG_NETGUARD_LOG", "")
_LOCAL = {"127.0.0.1", "::1", "localhost", "localhost.", "0.0.0.0", "::", ""}


def _record(what: str) -> None:
    if _LOG:
        with open(_LOG, "a", encoding="utf-8") as f:
            f.write(what + "\n")


def _is_local(host) -> bool:
    if isinstance(host, (bytes, bytearray)):
        host = host.decode("ascii", "replace")
    host = str(host).lower()
    if host.startswith("::ffff:"):  # an IPv4 address written as IPv6
        host = host[len("::ffff:"):]
    return host in _LOCAL or host.startswith("127.") or host.endswith(".localhost")


def _leaves(address) -> bool:
    """Whether a socket address (a (host, port, ...) tuple) is off this machine; Unix socket paths never are."""
    return isinstance(address, tuple) and bool(address) and not _is_local(address[0])


def _refuse(what: str):
    _record(what)
    return OSError(101, "network is unreachable (blocked by the offline test)")


_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex
_sendto, _sendmsg = socket.socket.sendto, socket.socket.sendmsg
_getaddrinfo, _gethostbyname, _gethostbyname_ex = socket.getaddrinfo, socket.gethostbyname, socket.gethostbyname_ex


def _kind(sock) -> str:
    return "udp" if sock.type == socket.SOCK_DGRAM else "tcp" if sock.type == socket.SOCK_STREAM else f"type {sock.type}"


def _guarded_connect(original):
    def connect(self, address):
        if _leaves(address):
            raise _refuse(f"connect ({_kind(self)}) {address!r}")
        return original(self, address)

    return connect


def _guarded_sendto(self, data, *args):
    address = args[-1] if args else None  # sendto(data, address) or sendto(data, flags, address)
    if _leaves(address):
        raise _refuse(f"sendto ({_kind(self)}) {address!r}")
    return _sendto(self, data, *args)


def _guarded_sendmsg(self, buffers, *args):
    address = args[2] if len(args) > 2 else None  # sendmsg(buffers, ancdata, flags, address)
    if _leaves(address):
        raise _refuse(f"sendmsg ({_kind(self)}) {address!r}")
    return _sendmsg(self, buffers, *args)


def _lookup_refused(what: str, host):
    _record(f"{what} {host!r}")
    return socket.gaierror(socket.EAI_NONAME, "name lookup blocked by the offline test")


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host is not None and not _is_local(host):
        raise _lookup_refused("getaddrinfo", host)
    return _getaddrinfo(host, *args, **kwargs)


def _guarded_gethostbyname(host):
    if not _is_local(host):
        raise _lookup_refused("gethostbyname", host)
    return _gethostbyname(host)


def _guarded_gethostbyname_ex(host):
    if not _is_local(host):
        raise _lookup_refused("gethostbyname_ex", host)
    return _gethostbyname_ex(host)


socket.socket.connect = _guarded_connect(_connect)
socket.socket.connect_ex = _guarded_connect(_connect_ex)
socket.socket.sendto = _guarded_sendto
socket.socket.sendmsg = _guarded_sendmsg
socket.getaddrinfo = _guarded_getaddrinfo
socket.gethostbyname = _guarded_gethostbyname
socket.gethostbyname_ex = _guarded_gethostbyname_ex
