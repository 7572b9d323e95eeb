"""Where a webhook may be sent: http(s) URLs of at most 2048 characters whose host
resolves only to public addresses, unless the settings allow more.

Checked when an endpoint is created (422) and again before every attempt, with a fresh
DNS lookup whose address the attempt then connects to, so a name that later resolves to
an internal address (DNS rebinding) reaches nothing inside.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from shared.settings import Settings

MAX_URL_LENGTH = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Address kinds refused by default, in the order they are named.
_REFUSED_KINDS = (
    ("is_loopback", "loopback"),
    ("is_link_local", "link-local"),
    ("is_multicast", "multicast"),
    ("is_unspecified", "unspecified"),
    ("is_reserved", "reserved"),
    ("is_private", "private"),
)


class TargetRefused(ValueError):
    """A webhook URL that may not be used; the message says why."""


def check_url_text(url: str) -> str:
    """Refuse a URL by its text alone: not http(s), no host, credentials in it, or over
    :data:`MAX_URL_LENGTH` characters. Returns it unchanged."""
    if len(url) > MAX_URL_LENGTH:
        raise TargetRefused(f"URL is {len(url)} characters; the limit is {MAX_URL_LENGTH}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise TargetRefused(f"scheme {parts.scheme or '(none)'!r} is not http or https")
    if not parts.hostname:
        raise TargetRefused("URL has no host")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("URL may not carry credentials; the signature authenticates")
    if port == 0:
        raise TargetRefused("port 0 is not a port to send to")
    return url


def refusal(address: IPAddress, settings: Settings) -> str | None:
    """Why ``address`` may not receive webhooks (None: it may)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if settings.webhook_allow_private:
        return None
    for network in settings.webhook_allowed_networks:
        if address in ipaddress.ip_network(network, strict=False):
            return None
    for attribute, kind in _REFUSED_KINDS:
        if getattr(address, attribute):
            return f"{kind} address {address}"
    if not address.is_global:
        return f"non-public address {address}"
    return None


def resolve_target(url: str, settings: Settings) -> IPAddress:
    """The address to connect to for ``url``: its host looked up now; refused unless every
    address it resolves to may receive webhooks (TargetRefused)."""
    check_url_text(url)
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise TargetRefused(f"host {host!r} does not resolve ({exc})") from None
        addresses = list(
            dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos)
        )
    if not addresses:
        raise TargetRefused(f"host {host!r} does not resolve")
    for address in addresses:
        reason = refusal(address, settings)
        if reason is not None:
            raise TargetRefused(
                f"host {host!r} resolves to {reason}; such targets are refused unless "
                "TAILSYNTH_WEBHOOK_ALLOW_PRIVATE or TAILSYNTH_WEBHOOK_ALLOWED_NETWORKS allow them"
            )
    return addresses[0]
