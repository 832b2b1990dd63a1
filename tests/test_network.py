"""WebRTC out of a container (issue 9): media sockets inside --udp-ports, host candidates
carrying --announced-address. Real servers, real aiortc clients, real ports."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import psutil
import pytest
from aioice.ice import get_host_addresses
from aiortc import RTCConfiguration, RTCIceCandidate, RTCPeerConnection
from aiortc.sdp import SessionDescription

from bench.client import OfferRefused, StreamClient, SyntheticCamera
from bench.serve import ServerProcess
from signaling.candidates import announce
from tests.conftest import ARTIFACTS, RunningServer

# aioice binds one host candidate per address (loopback and link-local excepted), and
# aiortc bundles everything onto one ICE component: one UDP socket per address and session.
SOCKETS_PER_SESSION = len(get_host_addresses(use_ipv4=True, use_ipv6=True))
PROBE_FIRST_PORTS = (20_000, 30_000)  # below Linux's ephemeral range, so clients' sockets stay out
ANNOUNCED = "192.0.2.7"  # TEST-NET-1: reaches nobody

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


async def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not in {timeout_s:.0f} s: {what}")
        await asyncio.sleep(0.05)


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
    """Only candidates of the announced address's family change; ports never do."""
    server = await start_server()
    client = StreamClient(server.url)
    try:
        await client.connect()
        sdp = client.pc.remoteDescription.sdp
    finally:
        await client.close()
    announced = announce(sdp, "2001:db8::7")
    before, after = answer_candidates(sdp), answer_candidates(announced)
    assert [c.port for c in after] == [c.port for c in before]
    for old, new in zip(before, after, strict=True):
        expected = "2001:db8::7" if ipaddress.ip_address(old.ip).version == 6 else old.ip
        assert new.ip == expected
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
