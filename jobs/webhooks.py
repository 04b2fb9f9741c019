"""Webhooks of the ad-hoc service: where a callback may go, how it is signed, how it is retried.

On done or failed, the status document is POSTed to the client's ``callback_url`` with

- ``X-Paddock-Timestamp``: Unix seconds of the attempt;
- ``X-Paddock-Signature: sha256=<hex>``: HMAC-SHA256 of ``"<timestamp>.<body>"`` keyed by
  the client's token (a receiver checks it with the token it already holds, and rejects
  old timestamps);

retried with exponential backoff while a deadline allows; every attempt goes into the job
record. Targets are checked when the request is accepted and again before each attempt
(a name may resolve elsewhere later): ``https`` only, never a loopback, link-local (cloud
metadata included), private, shared, reserved or multicast address, unless the host is one
of ``callback_allow`` (``--callback-allow``), which may then use plain ``http`` too.
Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlparse

import aiohttp

from jobs.jobstore import WebhookAttempt, now

SIGNATURE_HEADER = "X-Paddock-Signature"
TIMESTAMP_HEADER = "X-Paddock-Timestamp"
METADATA_HOSTS = ("metadata.google.internal", "metadata", "instance-data")


class CallbackRefused(ValueError):
    """A callback URL paddock will not call; the message says why and what to do."""


def sign(body: bytes, token: str, timestamp: int) -> str:
    """The ``X-Paddock-Signature`` value of a body sent at ``timestamp``."""
    digest = hmac.new(token.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _refused_address(address: str) -> str | None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for what, flag in (("loopback", ip.is_loopback), ("link-local (cloud metadata lives there)", ip.is_link_local),
                       ("private", ip.is_private), ("multicast", ip.is_multicast), ("reserved", ip.is_reserved),
                       ("unspecified", ip.is_unspecified), ("not globally routable", not ip.is_global)):
        if flag:
            return what
    return None


def check_callback_url(url: str, allow: Sequence[str],
                       resolve: Callable[[str], list[str]] | None = None) -> str:
    """``url`` itself when paddock may POST to it, else :class:`CallbackRefused`."""
    parsed = urlparse(url)
    host = (parsed.hostname or "").lower()
    allowed = host in {h.lower() for h in allow}
    if parsed.scheme not in (("http", "https") if allowed else ("https",)) or not host:
        raise CallbackRefused(f"callback_url {url!r}: use an https:// URL"
                              + ("" if allowed else " (plain http only for hosts of --callback-allow)"))
    if parsed.username or parsed.password:
        raise CallbackRefused(f"callback_url {url!r}: leave credentials out of the URL; requests are signed")
    if allowed:
        return url
    if host in METADATA_HOSTS or host == "localhost" or host.endswith(".localhost"):
        raise CallbackRefused(f"callback_url {url!r}: {host} is a local or metadata host; "
                              "name it in --callback-allow if it is really meant")
    try:
        addresses = (resolve or _resolve)(host)
    except OSError as exc:
        raise CallbackRefused(f"callback_url {url!r}: host {host!r} does not resolve ({exc}); check the name") from None
    for address in addresses:
        why = _refused_address(address)
        if why:
            raise CallbackRefused(f"callback_url {url!r}: {host} is {address}, a {why} address; paddock calls "
                                  "only public hosts unless --callback-allow names the host")
    return url


def _resolve(host: str) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})


async def deliver(url: str, body: bytes, token: str, client_id: str, *, allow: Sequence[str], deadline_s: float,
                  record: Callable[[WebhookAttempt], Awaitable[None]], first_backoff_s: float = 1.0,
                  attempt_timeout_s: float = 10.0) -> bool:
    """POST ``body`` to ``url`` until a 2xx answer or ``deadline_s`` has passed; each attempt is
    handed to ``record``. Returns whether it was delivered."""
    give_up_at, backoff = time.monotonic() + deadline_s, first_backoff_s
    timeout = aiohttp.ClientTimeout(total=attempt_timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            timestamp = int(time.time())
            attempt = WebhookAttempt(client_id=client_id, url=url, at=now())
            try:
                await asyncio.to_thread(check_callback_url, url, allow)
                headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(timestamp),
                           SIGNATURE_HEADER: sign(body, token, timestamp), "User-Agent": "paddock-webhook/1"}
                async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                    attempt.status_code = response.status
            except CallbackRefused as exc:
                attempt.error = str(exc)
                await record(attempt)
                return False
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                attempt.error = f"{type(exc).__name__}: {exc}"
            await record(attempt)
            if attempt.delivered:
                return True
            if time.monotonic() + backoff > give_up_at:
                return False
            await asyncio.sleep(backoff)
            backoff *= 2
