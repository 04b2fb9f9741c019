"""The ad-hoc render endpoint: a Ray Serve application over the batch job's stages.

Two deployments:

- ``Renderer``: owns one model replica and runs generate + review + mux on it
  (:class:`pipeline.render.RenderClips`, the batch job's render stage). One
  request at a time per replica.
- ``Api``: the FastAPI ingress. It validates briefs with the batch job's rules
  (:class:`CampaignBrief` plus the per-locale checks of ingest), fans them out
  with :func:`expand_brief`, keeps a bounded queue and the status table, and
  runs background workers that send queued renders to the Renderer handle and
  archive what comes back with :class:`ArchiveRenders`.

Routes: ``POST /v1/renders`` (a brief with the fields of a briefs-file row ->
202 ``{"render_ids": [...]}``), ``GET /v1/renders/{render_id}`` (status,
review tags, asset URLs), ``GET /healthz``, and FastAPI's ``/openapi.json``.

State: the queue and the status table live in the one ``Api`` replica's
memory, so the ingress runs exactly one replica and a restart forgets every
status. The DAM keeps the assets: posting the same brief again after a restart
gives the same render ids (they are content hashes), and a render whose
completion record is in the DAM is answered ``done`` at once, without
rendering. A render that is queued, running or done is not queued again.

Auth (token parsing and the loopback rule in jobs/auth.py): ``PADDOCK_API_TOKEN`` holds one token, or comma-separated
``client_id:token`` pairs. A client is its token's client id and sees only the
renders it asked for (another client's render id answers 404, so ids do not
leak; two clients posting the same brief both get its ids). With
``insecure_local`` there is no auth, one anonymous client, and the server only
binds and answers loopback.

Asset URLs: presigned GET URLs for an S3 DAM (valid ``presign_expires_s``),
``file://`` URIs of the archived files for a local-directory DAM (``DAM.url``).
"""

import asyncio
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import pyarrow as pa
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi import status as http_status
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ray import serve
from ray.serve.handle import DeploymentHandle

from model.generator import GeneratorConfig
from model.placement import ReplicaShape
from pipeline.archive import ArchiveRenders, ArchiveResult, find_archived
from pipeline.dam import open_dam
from jobs.args import ServeSetupError
from jobs.auth import TOKEN_ENV, client_for_token, is_loopback, parse_api_tokens
from pipeline.expand import expand_brief
from pipeline.errors import describe_error
from pipeline.ingest import check_locales
from pipeline.media import check_ffmpeg
from pipeline.mux import CHANNEL_PROFILES
from pipeline.review import ReviewResult, ReviewThresholds
from pipeline.settings import RenderSettings
from pipeline.render import RenderClips
from pipeline.run import ensure_ray, replica_factory, resolve_device
from schemas.brief import CampaignBrief
from schemas.render import RENDER_REQUEST_ARROW_SCHEMA, RenderRequest

logger = logging.getLogger(__name__)

APP_NAME = "paddock"
ANONYMOUS_CLIENT = "local"
# A brief is a few KiB of text; anything near this is a mistake or an attack.
MAX_BODY_BYTES = 64 * 1024
# Retry-After before any render has finished, and its bounds.
FIRST_RENDER_ESTIMATE_S = 10.0
RETRY_AFTER_BOUNDS_S = (1, 600)

RenderStatusName = Literal["queued", "running", "done", "failed"]


class ServeConfig(RenderSettings):
    """Everything the ad-hoc endpoint needs: the application args of ``build_app``. The shared
    settings (model, device, dam, tp_size, replicas = Renderer replicas, ...) are pipeline/settings.py's."""

    model_config = ConfigDict(frozen=True)

    queue_limit: int = Field(32, ge=1, description="renders waiting at most; more answer 503 with Retry-After")
    insecure_local: bool = Field(False, description="no auth; loopback only")
    presign_expires_s: int = Field(3600, ge=60, le=7 * 24 * 3600, description="lifetime of presigned S3 URLs")
    max_statuses: int = Field(10_000, ge=1, description="finished renders remembered; the oldest are forgotten")
    render_timeout_s: float = Field(1800.0, gt=0, description="a Renderer call running longer fails its render, "
                                    "and /healthz reports the replica stuck until a call finishes again")


# --------------------------------------------------------------------------- placement


def renderer_options(tp: int, replicas: int, device: str) -> dict[str, Any]:
    """Serve deployment options of the Renderer: one model replica per Serve replica,
    placed by model/placement.py (at tp > 1 a STRICT_PACK group per replica: bundle 0
    for the replica actor, then one bundle per rank)."""
    return {"num_replicas": replicas, "max_ongoing_requests": 1,
            **ReplicaShape.for_device(tp, device).serve_options()}


# --------------------------------------------------------------------------- deployments


@serve.deployment(name="Renderer")
class Renderer:
    """One model replica: RenderRequest rows in, rendered rows (assets, review, error) out."""

    def __init__(self, generator_config: GeneratorConfig, thresholds: ReviewThresholds, profile: str, tp: int):
        # At tp > 1 the replica's rank actors take the rank bundles of this replica's
        # placement group (renderer_options).
        self.render_clips = RenderClips(generator_config, thresholds=thresholds, profile=CHANNEL_PROFILES[profile],
                                        batch_size=1, make_generator=replica_factory(tp, generator_config.device))

    def __call__(self, requests: pa.Table) -> pa.Table:
        return self.render_clips(requests)


class AdHocBrief(CampaignBrief):
    """A brief as posted to ``POST /v1/renders``: the fields of a briefs-file row (null means
    "not given"), without a reference image, which this endpoint would have to read from the
    server's own disk."""

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    @field_validator("reference_image_uri")
    @classmethod
    def _no_reference_image(cls, value: str | None) -> None:
        if value is not None:
            raise ValueError("the ad-hoc endpoint does not take reference images; leave it out or use the batch job")
        return value


class RendersAccepted(BaseModel):
    render_ids: list[str]


class RenderStatus(BaseModel):
    render_id: str
    status: RenderStatusName
    campaign_id: str
    brief_id: str
    locale: str
    aspect_ratio: str
    take: int
    seed: int
    model_id: str
    review_status: str | None = None
    review_reasons: list[str] = []
    review: ReviewResult | None = Field(None, description="every review tag")
    assets: dict[str, str] = Field({}, description="extension -> URL: presigned for S3, file:// for a local DAM")
    error: str | None = None
    submitted_at: datetime
    finished_at: datetime | None = None


@dataclass
class RenderEntry:
    request: RenderRequest
    clients: set[str]
    status: RenderStatusName = "queued"
    review: ReviewResult | None = None
    keys: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    submitted_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    finished_at: datetime | None = None

    def finish(self, status: RenderStatusName, *, review: ReviewResult | None = None, keys: dict[str, str] | None = None,
               error: str | None = None) -> None:
        self.status, self.review, self.keys, self.error = status, review, keys or {}, error
        self.finished_at = datetime.now(timezone.utc)


def plan_renders(brief: CampaignBrief, model_id: str) -> list[RenderRequest]:
    """The brief's render requests, after the per-locale checks of ingest; a locale that
    cannot be rendered is a 422 naming it (an ad-hoc caller fixes the brief and posts again)."""
    kept, faults = check_locales(brief)
    if faults:
        fault = faults[0]
        # With no `locales`, the one target is the source locale.
        loc = ("body", "locales", fault.index) if brief.locales is not None else ("body", "source_locale")
        raise RequestValidationError([{"type": "value_error", "loc": loc, "msg": fault.reason,
                                       "input": brief.target_locales[fault.index]}])
    return expand_brief(brief.model_copy(update={"locales": kept}), row_index=0, model_id=model_id)


async def _awaited(response):
    # asyncio.wait_for takes a coroutine; a Serve DeploymentResponse is only awaitable.
    return await response


bearer = HTTPBearer(auto_error=False, description=f"a token from {TOKEN_ENV}")


def authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
    """The calling client's id. A dependency, so it runs before the body is validated."""
    api: Api = serve.get_replica_context().servable_object
    return api.client_id(request, credentials)


# No `from __future__ import annotations` in this module: Serve rebuilds the routes of the
# ingress class, and FastAPI must see real types there, not strings.
app = FastAPI(
    title="paddock",
    summary="Ad-hoc renders: a brief in, reviewed and archived clips with synchronized audio out.",
    version="1",
    # 413 before any route parses a body, by Content-Length or as a streamed body arrives.
    max_body_size=MAX_BODY_BYTES,
)


# Handlers never wait for a render, so one replica takes many requests at once; past
# max_queued_requests Serve itself answers 503 instead of queueing more.
@serve.deployment(name="Api", num_replicas=1, max_ongoing_requests=64, max_queued_requests=256,
                  ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Api:
    """The ingress: the queue, the status table and the workers feeding the Renderer. One replica."""

    def __init__(self, config: ServeConfig, renderer: DeploymentHandle, api_tokens: str | None = None):
        self.config = config
        self.renderer = renderer
        self.tokens = {} if config.insecure_local else parse_api_tokens(
            api_tokens if api_tokens is not None else os.environ.get(TOKEN_ENV))
        self.dam = open_dam(config.dam, s3_endpoint=config.s3_endpoint)
        self.archive = ArchiveRenders(self.dam)
        self.queue: asyncio.Queue[RenderEntry] = asyncio.Queue()
        self.renders: OrderedDict[str, RenderEntry] = OrderedDict()
        self.running = 0
        self.seconds_per_render: float | None = None
        self.stuck_since: float | None = None  # monotonic time of the first timed-out call since one finished
        # One worker per model replica: each keeps one replica busy.
        loop = asyncio.get_running_loop()
        self.workers = [loop.create_task(self._work()) for _ in range(config.replicas)]

    # ----------------------------------------------------------------- routes

    @app.post("/v1/renders", status_code=http_status.HTTP_202_ACCEPTED, response_model=RendersAccepted,
              responses={401: {"description": "no or wrong bearer token"},
                         413: {"description": f"body over {MAX_BODY_BYTES} bytes"},
                         422: {"description": "the brief is invalid; `detail[].loc` names the field"},
                         503: {"description": "the queue is full; retry after the Retry-After header's seconds"}})
    async def create_renders(self, brief: AdHocBrief, client: str = Depends(authenticate)) -> RendersAccepted:
        """Queue every render of a brief (locales x aspect ratios x variants)."""
        requests = plan_renders(brief, self.config.model)
        if len(requests) > self.config.queue_limit:
            raise RequestValidationError([{
                "type": "value_error", "loc": ("body", "variants"), "input": brief.variants,
                "msg": f"the brief makes {len(requests)} renders (locales x aspect_ratios x variants) and this "
                       f"server queues at most {self.config.queue_limit}; split it or use the batch job"}])
        # Renders not known here, or failed before, may already be in the DAM (a restart forgets statuses).
        unknown = [r for r in requests if self._needs_render(r.render_id)]
        records = await asyncio.gather(*(asyncio.to_thread(find_archived, self.dam, r) for r in unknown))
        # No await from here on: the checks and the enqueueing are one step. Checked again
        # after the awaits, since a concurrent call may have queued some of these meanwhile.
        pending = [(r, record) for r, record in zip(unknown, records) if self._needs_render(r.render_id)]
        to_queue = [r for r, record in pending if record is None]
        if self.queue.qsize() + len(to_queue) > self.config.queue_limit:
            raise HTTPException(http_status.HTTP_503_SERVICE_UNAVAILABLE,
                                detail=f"render queue full ({self.queue.qsize()} of {self.config.queue_limit} waiting)",
                                headers={"Retry-After": str(self._retry_after_s())})
        for request, record in pending:
            known = self.renders.get(request.render_id)
            entry = RenderEntry(request, known.clients if known else set())
            if record is None:
                self.queue.put_nowait(entry)
            else:
                entry.finish("done", review=record.review, keys=record.keys)
            self.renders[request.render_id] = entry
        for request in requests:
            self.renders[request.render_id].clients.add(client)
        self._forget_oldest()
        return RendersAccepted(render_ids=[r.render_id for r in requests])

    @app.get("/v1/renders/{render_id}", response_model=RenderStatus,
             responses={401: {"description": "no or wrong bearer token"},
                        404: {"description": "no render with this id among the caller's"}})
    async def get_render(self, render_id: str, client: str = Depends(authenticate)) -> RenderStatus:
        """A render's status; once done, its review tags and asset URLs."""
        entry = self.renders.get(render_id)
        if entry is None or client not in entry.clients:
            raise HTTPException(http_status.HTTP_404_NOT_FOUND, detail=f"no render {render_id!r} among yours")
        return RenderStatus(
            **entry.request.model_dump(include={"render_id", "campaign_id", "brief_id", "locale", "aspect_ratio",
                                                "take", "seed", "model_id"}),
            status=entry.status, review_status=entry.review.review_status if entry.review else None,
            review_reasons=entry.review.review_reasons if entry.review else [], review=entry.review,
            assets={ext: self.dam.url(key, self.config.presign_expires_s) for ext, key in entry.keys.items()},
            error=entry.error, submitted_at=entry.submitted_at, finished_at=entry.finished_at,
        )

    @app.get("/healthz", responses={503: {"description": "a render worker has stopped"}})
    async def healthz(self) -> dict[str, str]:
        """200 while the render workers run; no auth."""
        if self._stopped_workers():
            raise HTTPException(http_status.HTTP_503_SERVICE_UNAVAILABLE, detail="a render worker has stopped")
        if self.stuck_since is not None:
            raise HTTPException(http_status.HTTP_503_SERVICE_UNAVAILABLE, detail=(
                f"a Renderer replica is stuck: a call ran past render_timeout_s ({self.config.render_timeout_s:g} s) "
                f"{time.monotonic() - self.stuck_since:.0f} s ago and none has finished since"))
        return {"status": "ok"}

    def check_health(self) -> None:
        """Serve's health check: a replica whose workers stopped is replaced."""
        if self._stopped_workers():
            raise RuntimeError(f"{self._stopped_workers()} render worker(s) stopped")

    # ----------------------------------------------------------------- helpers

    def client_id(self, request: Request, credentials: HTTPAuthorizationCredentials | None) -> str:
        if self.config.insecure_local:
            # run_server binds loopback only; this covers a config that binds wider.
            if not is_loopback(request.client.host if request.client else None):
                raise HTTPException(http_status.HTTP_403_FORBIDDEN, detail="insecure_local server: loopback clients only")
            return ANONYMOUS_CLIENT
        client = client_for_token(self.tokens, credentials.credentials) if credentials else None
        if client is None:
            raise HTTPException(http_status.HTTP_401_UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"},
                                detail="missing or wrong bearer token" if credentials else "send Authorization: Bearer <token>")
        return client

    def _needs_render(self, render_id: str) -> bool:
        known = self.renders.get(render_id)
        return known is None or known.status == "failed"

    def _retry_after_s(self) -> int:
        per_render = self.seconds_per_render or FIRST_RENDER_ESTIMATE_S
        waiting = self.queue.qsize() + self.running
        low, high = RETRY_AFTER_BOUNDS_S
        return int(min(high, max(low, math.ceil(waiting * per_render / self.config.replicas))))

    def _forget_oldest(self) -> None:
        finished = [rid for rid, e in self.renders.items() if e.status in ("done", "failed")]
        for render_id in finished[: max(0, len(finished) - self.config.max_statuses)]:
            del self.renders[render_id]

    def _stopped_workers(self) -> int:
        return sum(worker.done() for worker in self.workers)

    async def _work(self) -> None:
        while True:
            entry = await self.queue.get()
            entry.status, started = "running", time.perf_counter()
            self.running += 1
            try:
                await self._render(entry)
            except Exception as exc:  # noqa: BLE001 - one render that fails is one failed status
                logger.warning("render %s failed: %s", entry.request.render_id, describe_error(exc))
                entry.finish("failed", error=describe_error(exc))
            finally:
                self.running -= 1
            elapsed = time.perf_counter() - started
            self.seconds_per_render = elapsed if self.seconds_per_render is None else (
                0.8 * self.seconds_per_render + 0.2 * elapsed)

    async def _render(self, entry: RenderEntry) -> None:
        table = pa.Table.from_pylist([entry.request.model_dump()], schema=RENDER_REQUEST_ARROW_SCHEMA)
        response = self.renderer.remote(table)
        try:
            rendered = await asyncio.wait_for(_awaited(response), self.config.render_timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            self.stuck_since = self.stuck_since or time.monotonic()
            raise TimeoutError(f"the Renderer call took over render_timeout_s ({self.config.render_timeout_s:g} s) "
                               "and was cancelled") from None
        self.stuck_since = None
        (row,) = (await asyncio.to_thread(self.archive, rendered)).to_pylist()
        review = ReviewResult.model_validate_json(row["review_json"]) if row["review_json"] else None
        if row["archive_json"]:
            archived = ArchiveResult.model_validate_json(row["archive_json"])
            entry.finish("done", review=review, keys=archived.keys)
        else:
            entry.finish("failed", review=review, error=row["error"] or "the renderer returned no assets")


# --------------------------------------------------------------------------- entry points


def build_application(config: ServeConfig, api_tokens: str | None = None) -> serve.Application:
    """The Serve application. ``api_tokens`` None: each Api replica reads PADDOCK_API_TOKEN
    from its own environment (how RayService pods get it, from a Secret)."""
    device = resolve_device(config.device)
    generator_config = GeneratorConfig(model=config.model, checkpoint_dir=config.checkpoint_dir, device=device)
    renderer = Renderer.options(**renderer_options(config.tp_size, config.replicas, device)).bind(
        generator_config, config.thresholds, config.profile, config.tp_size)
    return Api.bind(config, renderer, api_tokens)


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for ``serve run jobs.serve_app:build_app`` and RayService
    (args: model, checkpoint_dir, dam, s3_endpoint, tp_size, replicas, queue_limit, insecure_local, ...)."""
    try:
        config = ServeConfig.model_validate(args)
    except ValidationError as exc:
        raise ServeSetupError(f"serve app args: {exc}") from None
    return build_application(config)


def run_server(config: ServeConfig, *, port: int = 8000, host: str = "127.0.0.1", api_tokens: str | None = None,
               blocking: bool = True, log: Callable[[str], None] = print) -> str:
    """Start Serve on ``host:port`` with the paddock app; returns its base URL (when not blocking).

    ``api_tokens`` defaults to PADDOCK_API_TOKEN of this process (checked here, so a
    missing token fails before anything starts) and is handed to the Api replica.
    Blocking, it serves until interrupted, then deletes the app.
    """
    if config.insecure_local and not is_loopback(host):
        raise ServeSetupError(f"--insecure-local serves without auth, so it binds loopback only; got host {host!r}")
    if not config.insecure_local:
        api_tokens = api_tokens if api_tokens is not None else os.environ.get(TOKEN_ENV)
        parse_api_tokens(api_tokens)
    open_dam(config.dam, s3_endpoint=config.s3_endpoint)  # a DAM that cannot be opened fails here, in one line
    check_ffmpeg()  # and an ffmpeg that cannot mux (each renderer replica checks its own node's again)
    ensure_ray()
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_application(config, api_tokens), name=APP_NAME, route_prefix="/")
    url = f"http://{host}:{port}"
    log(f"paddock serve: {url} (OpenAPI at {url}/openapi.json; model {config.model}, "
        f"{config.replicas} replica(s), DAM {config.dam}{', NO AUTH' if config.insecure_local else ''})")
    if blocking:
        try:
            while True:
                time.sleep(3600)
        finally:
            serve.delete(APP_NAME)
    return url
