"""Puts the announced address (--announced-address) in an answer's host candidates.

Behind a port mapping (a container's published UDP ports) the browser cannot reach the
addresses this machine sees on itself; like other media servers' "announced IP", the host
candidates of the answer then carry the address it can reach, with the same ports (the
mapping keeps them). Candidates of the other IP family, and server-reflexive or relayed
ones, are left as they are. Only the text sent to the client changes: the peer connection
keeps its real candidates and answers ICE checks that arrive through the mapping.
"""

from __future__ import annotations

import ipaddress

from aiortc.sdp import SessionDescription


def announce(sdp: str, address: str) -> str:
    """`sdp` with `address` in place of the first host candidate's own address of its IP
    family, in each media; each media's `c=` line and port follow its first candidate, as
    aiortc writes them.

    The other host candidates of that family (a machine with several addresses) are dropped:
    rewritten, they would repeat the announced address with ports of sockets on other
    addresses, which the mapping (to one address) leads to another session or to nothing;
    left as they are, they are unreachable from outside anyway."""
    family = ipaddress.ip_address(address).version
    description = SessionDescription.parse(sdp)
    for media in description.media:
        announced = False
        kept = []
        for candidate in media.ice_candidates:
            if candidate.type == "host" and _family(candidate.ip) == family:
                if announced:
                    continue
                candidate.ip = address
                announced = True
            kept.append(candidate)
        media.ice_candidates = kept
        if media.ice_candidates:
            media.host = media.ice_candidates[0].ip
            media.port = media.ice_candidates[0].port
    return str(description)


def _family(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:  # an mDNS name (.local): not ours to replace
        return None
