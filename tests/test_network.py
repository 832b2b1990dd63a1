"""WebRTC out of a container (issue 9): media sockets inside --udp-ports, host candidates
carrying --announced-address. Real servers, real aiortc clients, real ports."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import psutil
import pytest
from aioice.ice import get_host_addresses
from aiortc import RTCConfiguration, RTCIceCandidate, RTCPeerConnection
from aiortc.sdp import MediaDescription, SessionDescription

from bench.client import OfferRefused, StreamClient, SyntheticCamera
from bench.serve import ServerProcess
from settings import Settings
from signaling import ports as ports_module
from signaling.app import build_app
from signaling.candidates import announce
from signaling.ports import PortRange, SessionPorts
from tests.conftest import ARTIFACTS, RunningServer
from transforms.catalog import build_engine
from transforms.host import EngineHost

# aioice binds one host candidate per address (loopback and link-local excepted), and
# aiortc bundles everything onto one ICE component: one UDP socket per address and session.
SOCKETS_PER_SESSION = len(get_host_addresses(use_ipv4=True, use_ipv6=True))
PROBE_FIRST_PORTS = (20_000, 30_000)  # below Linux's ephemeral range, so clients' sockets stay out
ANNOUNCED = "192.0.2.7"  # TEST-NET-1: reaches nobody
LOOPBACK = "127.0.0.1"

Serve = Callable[..., Awaitable[ServerProcess]]
StartServer = Callable[..., Awaitable[RunningServer]]
UdpSocket = tuple[str, int]

pytestmark = pytest.mark.skipif(SOCKETS_PER_SESSION == 0, reason="no non-loopback address for ICE")


WILDCARDS = {4: (socket.AF_INET, "0.0.0.0"), 6: (socket.AF_INET6, "::")}


def _bind_everywhere(port: int, versions: tuple[int, ...] = (4, 6)) -> list[socket.socket]:
    """UDP sockets on `port` of every address of these IP versions; OSError when it is taken."""
    sockets = []
    try:
        for family, host in (WILDCARDS[version] for version in versions):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sockets.append(sock)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def free_udp_range(count: int) -> tuple[int, int]:
    """`count` consecutive UDP ports free right now on every address."""
    for _ in range(50):
        first = random.randrange(*PROBE_FIRST_PORTS)
        try:
            for port in range(first, first + count):
                for sock in _bind_everywhere(port):
                    sock.close()
        except OSError:
            continue
        return first, first + count - 1
    raise RuntimeError(f"no {count} consecutive free UDP ports found")


@contextlib.contextmanager
def port_taken(port: int, versions: tuple[int, ...] = (4, 6)) -> Iterator[None]:
    """Someone else holds `port` on every address of these IP versions, for the block's duration."""
    sockets = _bind_everywhere(port, versions)
    try:
        yield
    finally:
        for sock in sockets:
            sock.close()


def udp_sockets(pid: int) -> set[UdpSocket]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections(kind="udp")}


def answer_candidates(sdp: str) -> list[RTCIceCandidate]:
    return [candidate for media in SessionDescription.parse(sdp).media for candidate in media.ice_candidates]


def candidates_of(media: MediaDescription, version: int) -> list[UdpSocket]:
    """(address, port) of the media's candidates of this IP version, in order."""
    return [(c.ip, c.port) for c in media.ice_candidates if ipaddress.ip_address(c.ip).version == version]


async def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not in {timeout_s:.0f} s: {what}")
        await asyncio.sleep(0.05)


def port_of(transport: asyncio.BaseTransport) -> int:
    return int(transport.get_extra_info("sockname")[1])


async def bind_host_socket(transports: list[asyncio.DatagramTransport]) -> int:
    """Bind a socket as aioice does for a host candidate (the call signaling/ports.py confines);
    it goes to `transports`, for the test to close. Returns its port."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(LOOPBACK, 0))
    transports.append(transport)
    return port_of(transport)


class HeldGathering:
    """A task that holds `session.gathering()` open and binds host sockets in it on request,
    so that a test decides exactly how gatherings overlap."""

    def __init__(self, session: SessionPorts, transports: list[asyncio.DatagramTransport]) -> None:
        self._requests: asyncio.Queue[asyncio.Future[int] | None] = asyncio.Queue()
        self._transports = transports
        self.task = asyncio.create_task(self._run(session))

    async def bind(self) -> int:
        reply: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self._requests.put(reply)
        return await reply

    async def end(self) -> None:
        await self._requests.put(None)
        await self.task

    async def _run(self, session: SessionPorts) -> None:
        with session.gathering():
            while (reply := await self._requests.get()) is not None:
                try:
                    reply.set_result(await bind_host_socket(self._transports))
                except Exception as exc:
                    reply.set_exception(exc)


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """`python server.py --transform invert ARGS` in its own process, so that its sockets are
    the server's alone (the clients run in this one); log in test-artifacts/server.log."""
    servers: list[ServerProcess] = []
    ARTIFACTS.mkdir(exist_ok=True)

    async def start(*args: str) -> ServerProcess:
        with (ARTIFACTS / "server.log").open("ab") as log:
            server = ServerProcess("--transform", "invert", *args, log=log)
        servers.append(server)
        await server.ready()
        return server

    yield start
    await asyncio.gather(*(server.stop() for server in servers))


@pytest.fixture
async def clients() -> AsyncIterator[list[StreamClient]]:
    """Clients to close at the end, whatever happened."""
    made: list[StreamClient] = []
    yield made
    await asyncio.gather(*(client.close() for client in made), return_exceptions=True)


async def test_every_media_socket_is_inside_the_range(serve: Serve, clients: list[StreamClient]) -> None:
    """Two sessions answered at once stream through ports of --udp-ports only, each on ports of
    its own, skipping one that someone else holds; a port outside it would be unreachable
    through the container's published range."""
    first, last = free_udp_range(20)
    with port_taken(first):
        server = await serve("--udp-ports", f"{first}-{last}")
        before = udp_sockets(server.process.pid)
        clients += [StreamClient(server.url), StreamClient(server.url)]
        await asyncio.gather(*(client.connect() for client in clients))
        await asyncio.gather(*(client.wait_frames(10) for client in clients))
        opened = udp_sockets(server.process.pid) - before

    assert len(opened) == 2 * SOCKETS_PER_SESSION, opened
    assert all(first < port <= last for _, port in opened), f"outside {first + 1}-{last}: {opened}"
    for client in clients:
        candidates = answer_candidates(client.pc.remoteDescription.sdp)
        assert candidates
        assert {(c.ip, c.port) for c in candidates} <= opened, "the answer names the sockets that serve it"
    ports = [{c.port for c in answer_candidates(client.pc.remoteDescription.sdp)} for client in clients]
    assert not ports[0] & ports[1], f"two sessions share ports: {ports}"


async def test_a_full_range_refuses_the_next_offer_with_503(serve: Serve, clients: list[StreamClient]) -> None:
    """A range too small for a second session: its offer gets a 503 naming --udp-ports (not a
    500, not a client left waiting), it leaves no socket behind, the first session streams
    on, and once it ends its ports serve a new one."""
    versions = sorted({ipaddress.ip_address(address).version for address in get_host_addresses(True, True)})
    # One port fits one session (one socket per address). With IPv4 and IPv6, a second port,
    # held here on IPv6, lets the second session bind IPv4 and then run out on IPv6: the
    # socket it had bound must be closed too.
    first, last = free_udp_range(len(versions))
    with port_taken(last, (6,)) if len(versions) == 2 else contextlib.nullcontext():
        server = await serve("--udp-ports", f"{first}-{last}")
        streaming = StreamClient(server.url)
        clients.append(streaming)
        await streaming.connect()
        await streaming.wait_frames(5)
        held = udp_sockets(server.process.pid)

        refused = StreamClient(server.url)
        clients.append(refused)
        with pytest.raises(OfferRefused) as caught:
            await refused.connect()
        assert caught.value.status == 503
        assert "--udp-ports" in caught.value.body["error"]
        await wait_until(lambda: udp_sockets(server.process.pid) == held, "the refused offer's sockets closed")
        await streaming.wait_frames(30)

        await streaming.close()
        await wait_until(
            lambda: all(port not in range(first, last + 1) for _, port in udp_sockets(server.process.pid)),
            "the ended session's ports released",
        )
        again = StreamClient(server.url)
        clients.append(again)
        await again.connect()
        await again.wait_frames(5)


async def test_host_candidates_carry_the_announced_address(serve: Serve) -> None:
    """With --announced-address, a browser on another machine is told the address it can
    reach (the Docker host's), with the published ports; IPv6 candidates keep their own."""
    first, last = free_udp_range(10)
    server = await serve("--udp-ports", f"{first}-{last}", "--announced-address", ANNOUNCED)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.createDataChannel("control")
        pc.addTrack(SyntheticCamera())
        await pc.setLocalDescription(await pc.createOffer())
        body = {"sdp": pc.localDescription.sdp, "type": "offer"}
        async with aiohttp.ClientSession() as http, http.post(f"{server.url}/offer", json=body) as response:
            assert response.status == 200
            answer = SessionDescription.parse((await response.json())["sdp"])
    finally:
        await pc.close()

    own_ipv6 = set(get_host_addresses(use_ipv4=False, use_ipv6=True))
    for media in answer.media:
        hosts = [c for c in media.ice_candidates if c.type == "host"]
        assert hosts
        for candidate in hosts:
            if ipaddress.ip_address(candidate.ip).version == 4:
                assert candidate.ip == ANNOUNCED
            else:
                assert candidate.ip in own_ipv6
            assert first <= candidate.port <= last
        assert (media.host, media.port) == (hosts[0].ip, hosts[0].port), "c= and m= follow the first candidate"
    assert any(c.ip == ANNOUNCED for media in answer.media for c in media.ice_candidates)


async def test_an_ipv6_announced_address_leaves_ipv4_alone(start_server: StartServer) -> None:
    """Only a candidate of the announced address's family changes (any others of it go); ports never do."""
    server = await start_server()
    client = StreamClient(server.url)
    try:
        await client.connect()
        sdp = client.pc.remoteDescription.sdp
    finally:
        await client.close()
    announced = announce(sdp, "2001:db8::7")
    medias = zip(SessionDescription.parse(sdp).media, SessionDescription.parse(announced).media, strict=True)
    for before, after in medias:
        assert candidates_of(after, 4) == candidates_of(before, 4)
        assert candidates_of(after, 6) == [("2001:db8::7", port) for _, port in candidates_of(before, 6)[:1]]
    assert announce(sdp, "2001:db8::7") == announced and announce(announced, "2001:db8::7") == announced


async def test_the_range_binds_only_the_servers_host_candidates(start_server: StartServer) -> None:
    """Server and clients in one event loop, offers answered while clients gather: only the
    server's host candidates land in the range, and the loop is unpatched once the answers
    are sent (no process-wide patch leaks into other code)."""
    first, last = free_udp_range(20)
    server = await start_server(udp_ports=f"{first}-{last}")
    pair = [StreamClient(server.url), StreamClient(server.url)]
    try:
        await asyncio.gather(*(client.connect() for client in pair))
        await asyncio.gather(*(client.wait_frames(5) for client in pair))
        for client in pair:
            served_by = answer_candidates(client.pc.remoteDescription.sdp)
            own = answer_candidates(client.pc.localDescription.sdp)
            assert served_by and all(first <= c.port <= last for c in served_by)
            assert own and not any(first <= c.port <= last for c in own), "a client's socket went into the range"
        assert "create_datagram_endpoint" not in vars(asyncio.get_running_loop())
    finally:
        await asyncio.gather(*(client.close() for client in pair))


async def test_overlapping_gatherings_confine_only_their_own_sockets() -> None:
    """Regression: the gathering session is per context, but no test made gatherings overlap,
    so a process-global "current session" passed as well. Here session A gathers while task B,
    outside any gathering, binds (its port must stay out of the range) and session C gathers
    (a port of its own in the range); once A ends, C's sockets are still confined, and once C
    ends the loop is unpatched."""
    first, last = free_udp_range(10)
    ports = PortRange(first, last)
    loop = asyncio.get_running_loop()
    sessions = [SessionPorts(ports, "a"), SessionPorts(ports, "c")]
    transports: list[asyncio.DatagramTransport] = []
    held: list[HeldGathering] = []
    try:
        held.append(HeldGathering(sessions[0], transports))
        in_a = await held[0].bind()
        outside = await asyncio.create_task(bind_host_socket(transports))  # task B, made in this context
        held.append(HeldGathering(sessions[1], transports))
        in_c = await held[1].bind()
        assert outside not in ports, f"a socket outside any gathering went into {ports}"
        assert in_a in ports and in_c in ports and in_a != in_c, (in_a, in_c)

        await held[0].end()
        assert "create_datagram_endpoint" in vars(loop), "A's end unpatched the loop while C gathers"
        assert await held[1].bind() in ports, "C's socket left the range once A ended"
        await held[1].end()
        assert "create_datagram_endpoint" not in vars(loop)
    finally:
        for gathering in held:
            gathering.task.cancel()
        await asyncio.gather(*(gathering.task for gathering in held), return_exceptions=True)
        for session in sessions:
            session.close()
        for transport in transports:
            transport.close()


async def test_a_socket_outside_the_range_refuses_the_offer(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: had aioice bound its host sockets with a call the wrapper does not recognise,
    they took ports of the system's choice without a word, and the browser was told ports the
    container does not publish. The answer is checked now: a 503 that says so, an error logged,
    and no session left."""
    monkeypatch.setattr(ports_module, "_host_candidate_address", lambda args, kwargs: None)
    first, last = free_udp_range(10)
    server = await start_server(udp_ports=f"{first}-{last}")
    client = StreamClient(server.url)
    try:
        with pytest.raises(OfferRefused) as caught:
            await client.connect()
    finally:
        await client.close()
    assert caught.value.status == 503
    assert f"outside --udp-ports {first}-{last}" in caught.value.body["error"]
    assert any(r.levelno == logging.ERROR and "outside --udp-ports" in r.getMessage() for r in caplog.records)
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/health") as response:
        assert (await response.json())["sessions"] == 0


async def test_a_socket_bound_as_its_session_closes_is_closed() -> None:
    """Regression: a host socket whose creation was under way when its session closed (another
    address failed) was kept after close() had run, open for good."""
    first, last = free_udp_range(2)
    session = SessionPorts(PortRange(first, last), "s")
    loop = asyncio.get_running_loop()
    waiting, release = asyncio.Event(), asyncio.Event()
    created: list[asyncio.BaseTransport] = []

    async def slow_create(
        protocol_factory: Callable[[], asyncio.DatagramProtocol], *, sock: socket.socket
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        waiting.set()
        await release.wait()
        transport, protocol = await loop.create_datagram_endpoint(protocol_factory, sock=sock)
        created.append(transport)
        return transport, protocol

    opening = asyncio.create_task(session.open(slow_create, asyncio.DatagramProtocol, LOOPBACK))
    await waiting.wait()
    session.close()
    release.set()
    with pytest.raises(ConnectionError, match="closed while gathering"):
        await opening
    assert len(created) == 1 and created[0].is_closing()


async def test_the_loop_gets_back_a_patch_made_before_the_gathering() -> None:
    """Regression: the end of the last gathering deleted the loop's instance attribute, and with
    it a patch someone else had put there before."""
    first, last = free_udp_range(2)
    loop = asyncio.get_running_loop()
    earlier = loop.create_datagram_endpoint
    setattr(loop, "create_datagram_endpoint", earlier)  # noqa: B010 (a patch, as ports.py makes one)
    try:
        with SessionPorts(PortRange(first, last), "s").gathering():
            assert vars(loop)["create_datagram_endpoint"] is not earlier
        assert vars(loop)["create_datagram_endpoint"] is earlier
    finally:
        vars(loop).pop("create_datagram_endpoint", None)


def test_one_announced_host_candidate_per_family() -> None:
    """Regression: on a machine with two IPv4 addresses, both host candidates became
    ANNOUNCED:port, the second with the port of a socket the mapping does not lead to. Only the
    first IPv4 host candidate stays (announced); IPv6 and server-reflexive ones are untouched."""
    sdp = "\r\n".join(
        [
            "v=0",
            "o=- 1 1 IN IP4 0.0.0.0",
            "s=-",
            "t=0 0",
            "m=video 40001 UDP/TLS/RTP/SAVPF 96",
            "c=IN IP4 10.0.0.5",
            "a=mid:0",
            "a=rtpmap:96 VP8/90000",
            "a=candidate:1 1 udp 2130706431 10.0.0.5 40001 typ host",
            "a=candidate:2 1 udp 2130706431 172.17.0.2 40002 typ host",
            "a=candidate:3 1 udp 2130706431 fd00::2 40003 typ host",
            "a=candidate:4 1 udp 1694498815 203.0.113.9 5000 typ srflx raddr 10.0.0.5 rport 40001",
            "a=ice-ufrag:abcd",
            "a=ice-pwd:0123456789012345678901",
            "",
        ]
    )
    announced = announce(sdp, ANNOUNCED)
    [media] = SessionDescription.parse(announced).media
    assert [(c.ip, c.port, c.type) for c in media.ice_candidates] == [
        (ANNOUNCED, 40001, "host"),
        ("fd00::2", 40003, "host"),
        ("203.0.113.9", 5000, "srflx"),
    ]
    assert (media.host, media.port) == (ANNOUNCED, 40001)
    assert announce(announced, ANNOUNCED) == announced


def test_a_range_smaller_than_max_sessions_warns_at_start(caplog: pytest.LogCaptureFixture) -> None:
    """Each session takes a port of --udp-ports: with fewer ports than --max-sessions, offers get
    503 below the limit the operator set, so the start says so."""
    settings = Settings(transform="invert", udp_ports="40000-40002", max_sessions=4)
    build_app(settings, EngineHost(lambda warn: build_engine(settings, warn), transform="invert", device="cpu"))
    assert any(
        r.levelno == logging.WARNING and "--udp-ports 40000-40002 holds only 3 sessions" in r.getMessage()
        for r in caplog.records
    )
