"""A phase's host list as Daytona can enforce it: IPv4 /32s, at most five.

Daytona's firewall takes CIDRs, not names, so names are resolved here, on the host, when the
phase starts. Each address is vetted (`egress.addresses.refusal`): a name that resolves to a
loopback, private or metadata address is refused, whatever the repository says. What cannot be
expressed (a `*.` wildcard, a name with no IPv4 address, addresses past the fifth) is dropped
and said, never widened: the list sent is always a subset of what the phase allows.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from backspace.orchestrator.egress.addresses import refusal
from backspace.orchestrator.egress.hosts import HostList

Resolver = Callable[[str], Awaitable[Sequence[str]]]
MAX_CIDRS = 5  # "networkAllowList accepts up to 5 CIDR network blocks" (Daytona's docs)
RESOLVE_TIMEOUT = 10.0


async def system_resolver(host: str) -> Sequence[str]:
    """The host's own resolver (getaddrinfo: /etc/hosts, then DNS), IPv4 only."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class NetworkPlan:
    """The /32s to allow, and each host (or part of one) left out with the reason."""

    cidrs: tuple[str, ...]
    dropped: tuple[tuple[str, str], ...]


async def plan(
    hosts: HostList, resolve: Resolver, limit: int = MAX_CIDRS, *, first: str | None = None
) -> NetworkPlan:
    """`first`: a host (or an address) planned before `hosts`: the model gateway's, which may
    be an address (BACKSPACE_PUBLIC_URL's host), so it is no HostList entry."""
    cidrs: list[str] = []
    dropped: list[tuple[str, str]] = []
    for host in [*([first] if first else []), *hosts]:
        if host.startswith("*."):
            dropped.append((host, "Daytona allows addresses, and a wildcard names no address"))
            continue
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                addresses = list(await resolve(host))
        except (TimeoutError, OSError) as exc:
            dropped.append((host, f"{host} could not be resolved: {exc or 'timed out'}"))
            continue
        if not addresses:
            dropped.append((host, f"{host} has no IPv4 address (Daytona allows IPv4 only)"))
            continue
        refused = [why for why in map(refusal, addresses) if why]
        if refused:  # one bad address taints the name: DNS may hand it out next
            dropped.append((host, f"{host} resolves to {refused[0]}: a sandbox may not reach it"))
            continue
        new = [f"{a}/32" for a in addresses if f"{a}/32" not in cidrs]
        room = max(0, limit - len(cidrs))
        cidrs += new[:room]
        if new[room:]:
            left = ", ".join(cidr.removesuffix("/32") for cidr in new[room:])
            dropped.append(
                (host, f"Daytona allows at most {limit} addresses; not allowed: {left} of {host}")
            )
    return NetworkPlan(tuple(cidrs), tuple(dropped))
