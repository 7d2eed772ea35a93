"""Loopback ICE: let aiortc offer a 127.0.0.1 host candidate.

aioice leaves 127.0.0.1 out of its host candidates, so on a host whose only interface is `lo`
(a container or network namespace) a server bound to loopback could never connect, even to a
browser on the same machine. When the server is bound to a loopback address we add it back.
"""

from __future__ import annotations

import aioice.ice

_original = aioice.ice.get_host_addresses


def _with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    addresses = _original(use_ipv4, use_ipv6)
    if use_ipv4 and "127.0.0.1" not in addresses:
        addresses.append("127.0.0.1")
    return addresses


def offer_loopback_candidates() -> None:
    aioice.ice.get_host_addresses = _with_loopback
