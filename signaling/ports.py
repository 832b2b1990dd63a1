"""Confines the UDP sockets of WebRTC sessions to a port range (--udp-ports).

Why: from a container, media reaches the server only through published ports
(`-p 40000-40100:40000-40100/udp`), but aiortc/aioice have no port option: aioice binds
each host candidate with `loop.create_datagram_endpoint(factory, local_addr=(address, 0))`
in `Connection.get_component_candidates`, so the system picks any port.

How: while a session gathers its candidates (`SessionPorts.gathering()`), the running
loop's `create_datagram_endpoint` is wrapped, and a context variable says which session is
gathering. Only calls in that session's context *and* of exactly aioice's host-candidate
shape (a numeric local address with port 0, nothing else) get a socket bound here, inside
the range; every other call goes to the loop untouched:

- other code, and aiortc clients in the same process, never see a difference;
- TURN client sockets (`remote_addr=` with no local address) and the mDNS socket (`sock=`)
  keep ports of the system's choice: they talk *out* to a server or a multicast group, and
  nothing needs to be published for them;
- no STUN client socket exists: server-reflexive candidates reuse the host sockets.

The wrapper is installed on the loop when the first gathering starts and removed when the
last one ends (putting back any patch someone else had put on that loop), so nothing
outside answering an offer is patched. Concurrent offers are safe: each gathers in its own
context, a port is picked and bound in one synchronous step (no other coroutine runs in
between), and the kernel refuses a port that is taken, by us or by anyone, so it is skipped.

If a socket ever escapes anyway (aioice calls with another shape, or gathers outside
`gathering()`), `SessionPorts.check_host_ports` catches it in the answer and the offer is
refused: silently leaving the range would give the browser a port it cannot reach.

A session binds one socket on each host address (aiortc bundles and multiplexes RTCP onto
one ICE component), so the range holds as many sessions as it has ports; sockets on different
addresses may share a port number.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import logging
import socket
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from aiortc.sdp import SessionDescription

logger = logging.getLogger(__name__)

DatagramEndpoint = tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]


class PortRangeError(RuntimeError):
    """The session cannot be reached through --udp-ports (HTTP 503).

    Not an OSError on purpose: aioice logs an OSError from a bind and skips that address,
    which would answer the offer with no candidate and leave the browser waiting."""


class PortRangeExhausted(PortRangeError):
    """Every port of --udp-ports is taken: no new session fits."""


class PortRangeBypassed(PortRangeError):
    """A host candidate of a session was bound outside --udp-ports (a bug: aioice changed)."""


class PortRange:
    """The ports first..last (both included), shared by all sessions of one server.

    Ports are handed out round robin on each address, so a port a session just released is
    the last one picked again (late packets of the old session meet no new one)."""

    def __init__(self, first: int, last: int) -> None:
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"invalid UDP port range {first}-{last}")
        self.first = first
        self.last = last
        self._next: dict[str, int] = {}  # address -> the port to try first

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def bind(self, host: str) -> socket.socket:
        """A UDP socket bound to `host` on the next free port of the range.

        Raises PortRangeExhausted when every port is taken on `host`, or the OSError of
        any other bind failure (e.g. an address that cannot be bound at all)."""
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        start = self._next.get(host, self.first)
        for offset in range(len(self)):
            port = self.first + (start - self.first + offset) % len(self)
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((host, port))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
            self._next[host] = port + 1 if port < self.last else self.first
            return sock
        raise PortRangeExhausted(
            f"no free UDP port left on {host} in --udp-ports {self} ({len(self)} ports, one per "
            "session): try again when a session ends, or widen --udp-ports (and the published range)"
        )


class SessionPorts:
    """The host-candidate sockets of one session, all bound inside `ports`.

    `close()` closes every one of them, including any that aioice had not taken over yet
    when gathering failed; it may run any number of times."""

    def __init__(self, ports: PortRange, session_id: str) -> None:
        self.ports = ports
        self._session_id = session_id
        self._transports: list[asyncio.BaseTransport] = []
        self._closed = False

    @contextlib.contextmanager
    def gathering(self) -> Iterator[None]:
        """Within this block, host-candidate sockets this task (and the tasks it starts)
        opens are this session's, inside the range."""
        loop = asyncio.get_running_loop()
        _install(loop)
        token = _gathering_for.set(self)
        try:
            yield
        finally:
            _gathering_for.reset(token)
            _uninstall(loop)

    def close(self) -> None:
        self._closed = True
        for transport in self._transports:
            transport.close()
        self._transports.clear()

    def check_host_ports(self, sdp: str) -> None:
        """Raise PortRangeBypassed if a host candidate of `sdp` (our local description) has a
        port outside the range: the wrapper only binds calls it recognises, so a change in
        aioice would otherwise leave the range without a word."""
        outside = sorted(
            {
                (candidate.ip, candidate.port)
                for media in SessionDescription.parse(sdp).media
                for candidate in media.ice_candidates
                if candidate.type == "host" and candidate.port not in self.ports
            }
        )
        if outside:
            logger.error(
                "session %s: host candidates outside --udp-ports %s: %s", self._session_id, self.ports, outside
            )
            raise PortRangeBypassed(
                f"the server bound UDP sockets outside --udp-ports {self.ports} ({outside}), which the "
                "browser cannot reach; this is a server bug, please report it"
            )

    async def open(
        self, create: Callable[..., Any], protocol_factory: Callable[[], asyncio.DatagramProtocol], host: str
    ) -> DatagramEndpoint:
        if self._closed:
            raise self._closed_error()
        sock = self.ports.bind(host)
        try:
            transport, protocol = await create(protocol_factory, sock=sock)
        except BaseException:
            sock.close()
            raise
        if self._closed:  # closed while `create` ran: close() could not see this transport
            transport.close()
            raise self._closed_error()
        self._transports.append(transport)
        logger.debug("session %s: UDP %s port %d", self._session_id, host, sock.getsockname()[1])
        return transport, protocol

    def _closed_error(self) -> ConnectionError:
        return ConnectionError(f"session {self._session_id} closed while gathering")


_gathering_for: ContextVar[SessionPorts | None] = ContextVar("stylecam_gathering_for", default=None)


@dataclasses.dataclass
class _Installed:
    gatherings: int  # under way on the loop; the wrapper is installed while > 0
    previous: Any  # the loop's own create_datagram_endpoint attribute before ours (someone's patch), or None


_installs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Installed] = weakref.WeakKeyDictionary()


def _host_candidate_address(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The address of aioice's host-candidate call (`local_addr=(address, 0)` and nothing
    else), or None for any other call."""
    if args or set(kwargs) != {"local_addr"}:
        return None
    local_addr = kwargs["local_addr"]
    if not (isinstance(local_addr, tuple) and len(local_addr) == 2 and local_addr[1] == 0):
        return None
    try:
        return str(ipaddress.ip_address(local_addr[0]))
    except ValueError:
        return None


def _install(loop: asyncio.AbstractEventLoop) -> None:
    installed = _installs.get(loop)
    if installed is None:
        installed = _installs[loop] = _Installed(0, vars(loop).get("create_datagram_endpoint"))
        _wrap(loop)
    installed.gatherings += 1


def _wrap(loop: asyncio.AbstractEventLoop) -> None:
    original = loop.create_datagram_endpoint

    async def create_datagram_endpoint(
        protocol_factory: Callable[[], asyncio.DatagramProtocol], *args: Any, **kwargs: Any
    ) -> DatagramEndpoint:
        session = _gathering_for.get()
        host = _host_candidate_address(args, kwargs) if session is not None else None
        if session is None or host is None:
            return await original(protocol_factory, *args, **kwargs)
        return await session.open(original, protocol_factory, host)

    # An attribute of this loop object only (asyncio's loops take one): other loops, and
    # this one once the last gathering ends, keep the class's own method.
    setattr(loop, "create_datagram_endpoint", create_datagram_endpoint)  # noqa: B010 (not the typed method)


def _uninstall(loop: asyncio.AbstractEventLoop) -> None:
    installed = _installs[loop]
    installed.gatherings -= 1
    if installed.gatherings > 0:
        return
    del _installs[loop]
    if installed.previous is not None:
        setattr(loop, "create_datagram_endpoint", installed.previous)  # noqa: B010 (as in _wrap)
    else:
        delattr(loop, "create_datagram_endpoint")
