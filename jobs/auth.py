"""Who may call the ad-hoc endpoint and the review page: the tokens and roles of
``PADDOCK_API_TOKEN`` (``client_id:token[:role+role]``; ``render`` posts renders, ``review``
decides), the loopback rule of ``--insecure-local`` (the bind address, the peer, and no proxy
in between), and the FastAPI dependencies the routes of jobs/ use."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping
from typing import Any, Literal

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict
from ray import serve

from jobs.args import ServeSetupError

TOKEN_ENV = "PADDOCK_API_TOKEN"


Role = Literal["render", "review"]
ROLES: tuple[Role, ...] = ("render", "review")


class ClientToken(BaseModel):
    """One client of ``PADDOCK_API_TOKEN``: its token and what it may do."""

    model_config = ConfigDict(frozen=True)

    token: str
    roles: frozenset[Role] = frozenset({"render"})


def parse_api_tokens(spec: str | None) -> dict[str, ClientToken]:
    """client id -> token and roles, from ``PADDOCK_API_TOKEN``: one token (client id ``default``,
    role ``render``) or comma-separated ``client_id:token[:role+role]`` entries; roles are
    ``render`` (the default) and ``review`` (may decide on renders)."""
    if spec is None or not spec.strip():
        raise ServeSetupError(
            f"{TOKEN_ENV} is not set: set it to a token, or to comma-separated client_id:token[:role+role] entries; "
            "or start with --insecure-local for a loopback-only server without auth"
        )
    items = [item.strip() for item in spec.split(",") if item.strip()]
    if len(items) == 1 and ":" not in items[0]:
        return {"default": ClientToken(token=items[0])}
    tokens: dict[str, ClientToken] = {}
    for number, item in enumerate(items, 1):
        fields = [part.strip() for part in item.split(":")]
        if len(fields) not in (2, 3) or not all(fields):
            raise ServeSetupError(
                f"{TOKEN_ENV}: entry {number} is not client_id:token[:role+role]; with several tokens give each "
                "as client_id:token (optionally :render+review), separated by commas"
            )
        client, token = fields[:2]
        roles = fields[2].split("+") if len(fields) == 3 else ["render"]
        unknown = [role for role in roles if role not in ROLES]
        if unknown:
            raise ServeSetupError(f"{TOKEN_ENV}: entry {number} ({client!r}) has role {unknown[0]!r}; "
                                  f"roles are {' and '.join(ROLES)}, joined with '+'")
        if client in tokens:
            raise ServeSetupError(f"{TOKEN_ENV}: client id {client!r} appears twice; give each client one token")
        if token in (entry.token for entry in tokens.values()):
            raise ServeSetupError(f"{TOKEN_ENV}: two clients share a token; give each client its own")
        tokens[client] = ClientToken(token=token, roles=frozenset(roles))
    return tokens


def client_for_token(tokens: dict[str, ClientToken], presented: str) -> str | None:
    """The client whose token was presented, or None. Compares with every token in
    constant time, so the answer's timing says nothing about which one was close."""
    found = None
    for client, entry in tokens.items():
        if hmac.compare_digest(entry.token.encode(), presented.encode()):
            found = client
    return found


def is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


ANONYMOUS_CLIENT = "local"
# Headers a reverse proxy adds: behind one, every peer looks like loopback.
_PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


class Caller(BaseModel):
    """Who is calling: a client id, its roles, and its token (the key of its webhooks' signatures)."""

    model_config = ConfigDict(frozen=True)

    client_id: str
    roles: frozenset[Role]
    token: str | None = None


class Authenticator:
    """Bearer tokens from ``PADDOCK_API_TOKEN``; or, with ``insecure_local``, one anonymous client
    with every role, for a server bound to loopback and called from loopback without a proxy."""

    def __init__(self, tokens: dict[str, ClientToken], *, insecure_local: bool, bind_host: str):
        if insecure_local and not is_loopback(bind_host):
            raise ServeSetupError(f"--insecure-local serves without auth, so it binds loopback only; got host {bind_host!r}")
        self.tokens, self.insecure_local = tokens, insecure_local

    def caller(self, peer_host: str | None, headers: Mapping[str, str], bearer: str | None) -> Caller:
        """The caller, or an HTTPException: 401 without a valid token, 403 from a non-loopback
        peer (or through a proxy) of an insecure_local server."""
        if self.insecure_local:
            if not is_loopback(peer_host) or any(name in headers for name in _PROXY_HEADERS):
                raise HTTPException(403, detail="insecure_local server: loopback clients only, not through a proxy")
            return Caller(client_id=ANONYMOUS_CLIENT, roles=frozenset(ROLES))
        client = client_for_token(self.tokens, bearer) if bearer else None
        if client is None:
            raise HTTPException(401, headers={"WWW-Authenticate": "Bearer"},
                                detail="missing or wrong bearer token" if bearer else "send Authorization: Bearer <token>")
        entry = self.tokens[client]
        return Caller(client_id=client, roles=entry.roles, token=entry.token)


def require_role(caller: Caller, role: Role) -> Caller:
    if role not in caller.roles:
        raise HTTPException(403, detail=f"client {caller.client_id!r} lacks the {role!r} role; give its "
                                        f"{TOKEN_ENV} entry ':{role}' (e.g. {caller.client_id}:<token>:render+{role})")
    return caller


bearer = HTTPBearer(auto_error=False, description=f"a token from {TOKEN_ENV}")


def current_service() -> Any:
    """The object serving this request: the Serve replica (jobs/serve_app.py's Api). ``paddock
    review`` alone overrides this dependency with its own service (jobs/review_page.py)."""
    return serve.get_replica_context().servable_object


def authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                 service: Any = Depends(current_service)) -> Caller:
    """The caller. A dependency, so it runs before the body is validated."""
    return service.auth.caller(request.client.host if request.client else None, request.headers,
                               credentials.credentials if credentials else None)


def render_caller(caller: Caller = Depends(authenticate)) -> Caller:
    return require_role(caller, "render")


def review_caller(caller: Caller = Depends(authenticate)) -> Caller:
    return require_role(caller, "review")
