"""Who may call the ad-hoc endpoint: the tokens of ``PADDOCK_API_TOKEN`` and the
loopback rule of ``--insecure-local`` (jobs/serve_app.py applies them)."""

from __future__ import annotations

import hmac
import ipaddress

from jobs.args import ServeSetupError

TOKEN_ENV = "PADDOCK_API_TOKEN"


def parse_api_tokens(spec: str | None) -> dict[str, str]:
    """client id -> token, from ``PADDOCK_API_TOKEN``: one token (client id ``default``)
    or comma-separated ``client_id:token`` pairs."""
    if spec is None or not spec.strip():
        raise ServeSetupError(
            f"{TOKEN_ENV} is not set: set it to a token, or to comma-separated client_id:token pairs; "
            "or start with --insecure-local for a loopback-only server without auth"
        )
    items = [item.strip() for item in spec.split(",") if item.strip()]
    if len(items) == 1 and ":" not in items[0]:
        return {"default": items[0]}
    tokens: dict[str, str] = {}
    for item in items:
        client, sep, token = item.partition(":")
        client, token = client.strip(), token.strip()
        if not sep or not client or not token:
            raise ServeSetupError(
                f"{TOKEN_ENV}: entry {len(tokens) + 1} is not client_id:token; with several tokens give each "
                "as client_id:token, separated by commas"
            )
        if client in tokens:
            raise ServeSetupError(f"{TOKEN_ENV}: client id {client!r} appears twice; give each client one token")
        if token in tokens.values():
            raise ServeSetupError(f"{TOKEN_ENV}: two clients share a token; give each client its own")
        tokens[client] = token
    return tokens


def client_for_token(tokens: dict[str, str], presented: str) -> str | None:
    """The client whose token was presented, or None. Compares with every token in
    constant time, so the answer's timing says nothing about which one was close."""
    found = None
    for client, token in tokens.items():
        if hmac.compare_digest(token.encode(), presented.encode()):
            found = client
    return found


def is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
