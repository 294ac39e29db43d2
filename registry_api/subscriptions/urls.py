"""Which endpoints FeedGrid will call: https anywhere, plain http only on loopback, never a
link-local or cloud-metadata address (checked when a subscription is made, and again against
the addresses the name resolves to before each attempt)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from schemas.subscriptions import MAX_URL_CHARS

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})
METADATA_NAMES = frozenset(
    {"metadata.google.internal", "metadata", "instance-data", "metadata.azure.internal"}
)
# Cloud metadata services that are not link-local (AWS over IPv6, Alibaba Cloud's 100.100.100.200).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address) for address in ("fd00:ec2::254", "100.100.100.200")
)


class RefusedUrl(ValueError):
    """Why FeedGrid will not call this URL (a message for the client)."""


def _literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def refused_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a resolved address may not be called, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return None
    if address in METADATA_ADDRESSES:
        return f"{address} is a cloud metadata address"
    if address.is_link_local:
        return f"{address} is link-local (where cloud metadata services answer)"
    reserved = isinstance(address, ipaddress.IPv4Address) and address.is_reserved
    if address.is_unspecified or address.is_multicast or reserved:
        return f"{address} is not an address a receiver listens on"
    return None


def check_url(url: str) -> str:
    """The URL when FeedGrid may call it; raises RefusedUrl with the reason otherwise."""
    if len(url) > MAX_URL_CHARS:
        raise RefusedUrl(f"the URL is longer than {MAX_URL_CHARS} characters")
    if any(ord(character) < 33 or ord(character) == 127 for character in url):
        raise RefusedUrl("the URL holds spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise RefusedUrl(f"the URL cannot be read: {error}") from None
    host = (parts.hostname or "").lower().rstrip(".")
    if parts.scheme not in ("https", "http") or not host:
        raise RefusedUrl("the URL must be https://host/... (or http:// to a loopback address)")
    if parts.username is not None or parts.password is not None:
        raise RefusedUrl("credentials in the URL are not accepted: sign with the secret instead")
    if parts.fragment:
        raise RefusedUrl("the URL may not have a #fragment")
    if port == 0:
        raise RefusedUrl("port 0 is not a port")
    if host in METADATA_NAMES:
        raise RefusedUrl(f"{host} is a cloud metadata service")
    address = _literal_address(host)
    if address is not None:
        reason = refused_address(address)
        if reason is not None:
            raise RefusedUrl(reason)
    loopback = host in LOOPBACK_NAMES or (address is not None and address.is_loopback)
    if parts.scheme == "http" and not loopback:
        raise RefusedUrl("plain http is accepted for loopback receivers only: use https")
    return url


async def check_resolved(url: str) -> None:
    """Raises RefusedUrl when the URL's host now resolves to an address that may not be called
    (a name re-pointed after the subscription was made)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower().rstrip(".")
    if _literal_address(host) is not None or host in LOOPBACK_NAMES:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return  # the attempt itself fails and is retried; nothing was called
    for *_, sockaddr in found:
        reason = refused_address(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
        if reason is not None:
            raise RefusedUrl(f"{host} resolves to {reason}")
