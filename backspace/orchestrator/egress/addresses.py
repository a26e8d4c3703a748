"""Which addresses a sandbox may be let through to: public ones only.

A host list names hosts; what finally gets reached is an address. A name that resolves to a
loopback, private, link-local (cloud metadata at 169.254.169.254) or otherwise non-global address
would turn an allowlist entry into a door to the machine's own network, so such an address is
refused whatever name led to it. An internal mirror is reached through BACKSPACE_EGRESS_RESOLVE,
which the operator writes, never through a repository's DNS.
"""

from __future__ import annotations

import ipaddress

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # an IPv4 address behind a NAT64 gateway


def refusal(ip: str | Address) -> str | None:
    """None when `ip` is a public unicast address; otherwise why it may not be reached."""
    try:
        address: Address = ipaddress.ip_address(ip.split("%", 1)[0]) if isinstance(ip, str) else ip
    except ValueError:
        return f"{ip!r} is not an IP address"
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or _teredo_client(address)
        if embedded is None and address in NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            why = refusal(embedded)
            return f"{ip} embeds {why}" if why else None
        if address.is_site_local:
            return f"{address} is a site-local address"
    if address.is_loopback:
        return f"{address} is a loopback address"
    if address.is_link_local:
        return f"{address} is a link-local address (cloud metadata lives there)"
    if address.is_multicast:
        return f"{address} is a multicast address"
    if address.is_unspecified:
        return f"{address} is the unspecified address"
    if address.is_private or not address.is_global:
        return f"{address} is a private or reserved address"
    return None


def _teredo_client(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    teredo = address.teredo
    return teredo[1] if teredo else None
