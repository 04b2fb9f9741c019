"""The ad-hoc render endpoint: a Ray Serve application over the batch job's stages.

Two deployments:

- ``Renderer`` (jobs/renderer.py): owns one model replica and runs generate + review + mux on
  it (:class:`pipeline.render.RenderClips`, the batch job's render stage). One request at a
  time per replica; a replica too big for the cluster's GPUs stops the server at start-up.
- ``Api``: the FastAPI ingress (``ingress_replicas`` of them). It validates briefs with the batch
  job's rules (:class:`CampaignBrief` plus the per-locale checks of ingest), fans them out with
  :func:`expand_brief`, and runs background workers that send queued renders to the Renderer
  handle and archive what comes back with :class:`ArchiveRenders`.

Routes: ``POST /v1/renders`` (a brief with the fields of a briefs-file row, and an optional
``callback_url`` -> 202 ``{"render_ids": [...]}``), ``GET /v1/renders/{render_id}`` (status,
review tags, asset URLs), the OpenAI-style ``/v1/videos`` (jobs/videos.py), the review page
and decisions (jobs/review_page.py), ``GET /healthz``, and FastAPI's ``/openapi.json``.

State lives in the DAM, not in a replica: each accepted render has a job record
(jobs/jobstore.py) written before the 202 and updated as it runs; statuses are read from it,
so every ingress replica answers the same, and a replica that starts resumes every record
still queued or running (after a restart or a redeploy). A render whose completion record is
in the DAM is answered ``done`` at once, without rendering. Finished ad-hoc renders are rows of
the DAM's manifest and contact sheet, and each is an OpenLineage run (START on accept, then
COMPLETE or FAIL). Webhooks: jobs/webhooks.py.

Auth (jobs/auth.py): ``PADDOCK_API_TOKEN`` entries ``client_id:token[:role+role]``; ``render``
may post renders, ``review`` may decide. A client sees only the renders it asked for (another
client's render id answers 404). Each client has at most ``client_queue_limit`` renders queued
(429 with Retry-After past it). With ``insecure_local`` there is no auth, one anonymous client
with both roles, and the server binds (``host``) and answers loopback only, never through a proxy.

Asset URLs: presigned GET URLs for an S3 DAM (valid ``presign_expires_s``, signed for the
bucket's region), ``file://`` URIs of the archived files for a local-directory DAM (``DAM.url``).
"""

import asyncio
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from fastapi import Depends, FastAPI, HTTPException
from fastapi import status as http_status
from pydantic import ConfigDict, Field, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from jobs.adhoc import AdHocBrief, RendersAccepted, body_error, plan_renders
from jobs.args import ServeSetupError
from jobs.auth import TOKEN_ENV, Authenticator, Caller, authenticate, is_loopback, parse_api_tokens, render_caller
from jobs.jobstore import JobApi, JobRecord, JobStore, RenderStatus, WebhookAttempt, now, status_document
from jobs.renderer import Renderer, renderer_config, renderer_options
from jobs.review_page import RENDER_ID_PATTERN, AssetSigner, ReviewDesk, asset_secret
from jobs.review_page import router as review_router
from jobs.videos import router as videos_router
from jobs.webhooks import CallbackRefused, check_callback_url, deliver
from pipeline.archive import ArchiveRenders, ArchiveResult, find_archived
from pipeline.dam import open_dam
from pipeline.errors import describe_error
from pipeline.lineage import JobType, LineageConfig, LineageRun, checkpoint_dataset, dam_dataset
from pipeline.media import check_ffmpeg
from pipeline.reports import manifest_row, merge_into_dam_manifest, rendered_manifest_row
from pipeline.review import ReviewResult
from pipeline.run import ensure_ray
from pipeline.settings import RenderSettings
from schemas.render import RENDER_REQUEST_ARROW_SCHEMA, RenderRequest

logger = logging.getLogger(__name__)

APP_NAME = "paddock"
# A brief is a few KiB of text; anything near this is a mistake or an attack.
MAX_BODY_BYTES = 64 * 1024
# Retry-After before any render has finished, and its bounds.
FIRST_RENDER_ESTIMATE_S = 10.0
RETRY_AFTER_BOUNDS_S = (1, 600)


class ServeConfig(RenderSettings):
    """Everything the ad-hoc endpoint needs: the application args of ``build_app``. The shared
    settings (model, device, dam, tp_size, replicas = Renderer replicas, ...) are pipeline/settings.py's."""

    model_config = ConfigDict(frozen=True)

    queue_limit: int = Field(32, ge=1, description="renders waiting at most; more answer 503 with Retry-After")
    client_queue_limit: int = Field(8, ge=1, description="renders one client may have waiting; more answer 429")
    insecure_local: bool = Field(False, description="no auth; loopback only")
    host: str = Field("127.0.0.1", description="the address the HTTP proxy binds (insecure_local: loopback only)")
    presign_expires_s: int = Field(3600, ge=60, le=7 * 24 * 3600, description="lifetime of presigned S3 URLs")
    ingress_replicas: int = Field(1, ge=1, description="Api replicas; they share state through the DAM")
    callback_allow: tuple[str, ...] = Field((), description="callback hosts allowed although local or private "
                                                            "(and then over plain http too)")
    webhook_deadline_s: float = Field(300, gt=0, description="how long a webhook is retried")
    workdir: Path = Field(Path("./work"), description="where lineage.jsonl goes when OPENLINEAGE_URL is not set")
    render_timeout_s: float = Field(1800.0, gt=0, description="a Renderer call running longer fails its render, "
                                    "and /healthz reports the replica stuck until a call finishes again")


# --------------------------------------------------------------------------- deployments


def proxy_host() -> str | None:
    """The host Serve's HTTP proxies bind, from the Serve controller; None when it cannot be asked."""
    try:
        from ray.serve.context import _get_global_client

        return _get_global_client().http_config.host
    except Exception as exc:  # noqa: BLE001 - then the app args' host is all there is to check
        logger.warning("cannot read Serve's HTTP options (%s); checking the app args' host only", exc)
        return None


async def _awaited(response):
    # asyncio.wait_for takes a coroutine; a Serve DeploymentResponse is only awaitable.
    return await response


# No `from __future__ import annotations` in this module: Serve rebuilds the routes of the
# ingress class, and FastAPI must see real types there, not strings.
app = FastAPI(
    title="paddock",
    summary="Ad-hoc renders: a brief in, reviewed and archived clips with synchronized audio out.",
    version="1",
    # 413 before any route parses a body, by Content-Length or as a streamed body arrives.
    max_body_size=MAX_BODY_BYTES,
)
app.include_router(review_router)
app.include_router(videos_router)


# Handlers never wait for a render, so one replica takes many requests at once; past
# max_queued_requests Serve itself answers 503 instead of queueing more.
@serve.deployment(name="Api", max_ongoing_requests=64, max_queued_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Api:
    """The ingress: accepts renders into job records, and feeds the Renderer from its queue."""

    def __init__(self, config: ServeConfig, renderer: DeploymentHandle, api_tokens: str | None = None):
        self.config = config
        self.renderer = renderer
        tokens = {} if config.insecure_local else parse_api_tokens(
            api_tokens if api_tokens is not None else os.environ.get(TOKEN_ENV))
        # insecure_local: the address Serve's proxy really binds (a RayService sets it in http_options), not
        # only the one the app args claim; behind a sidecar proxy every peer would look like loopback.
        bind_host = (proxy_host() or config.host) if config.insecure_local else config.host
        self.auth = Authenticator(tokens, insecure_local=config.insecure_local, bind_host=bind_host)
        self.dam = open_dam(config.dam, s3_endpoint=config.s3_endpoint)
        self.jobs = JobStore(self.dam)
        self.loop = asyncio.get_running_loop()
        self.desk = ReviewDesk(self.dam, AssetSigner(asset_secret(self.dam, tokens)), config.workdir,
                               presign_expires_s=config.presign_expires_s,
                               on_retake=lambda record: self.loop.call_soon_threadsafe(self._enqueue, record))
        self.archive = ArchiveRenders(self.dam)
        self.queue: asyncio.Queue[JobRecord] = asyncio.Queue()
        self.active: dict[str, JobRecord] = {}  # queued or running in this replica
        self.accepting = asyncio.Lock()
        self.manifest_lock = threading.Lock()
        self.running = 0
        self.seconds_per_render: float | None = None
        self.stuck_since: float | None = None  # monotonic time of the first timed-out call since one finished
        # One worker per model replica: each keeps one replica busy.
        self.workers = [self.loop.create_task(self._work()) for _ in range(config.replicas)]
        self.resumed = self.loop.create_task(self._resume())

    # ----------------------------------------------------------------- routes

    @app.post("/v1/renders", status_code=http_status.HTTP_202_ACCEPTED, response_model=RendersAccepted,
              responses={401: {"description": "no or wrong bearer token"},
                         403: {"description": "the token lacks the render role"},
                         413: {"description": f"body over {MAX_BODY_BYTES} bytes"},
                         422: {"description": "the brief is invalid; `detail[].loc` names the field"},
                         429: {"description": "this client has too many renders queued; retry after Retry-After"},
                         503: {"description": "the queue is full; retry after the Retry-After header's seconds"}})
    async def create_renders(self, brief: AdHocBrief, caller: Caller = Depends(render_caller)) -> RendersAccepted:
        """Queue every render of a brief (locales x aspect ratios x variants)."""
        requests = plan_renders(brief, self.config.model)
        if len(requests) > self.config.queue_limit:
            raise body_error("variants", f"the brief makes {len(requests)} renders (locales x aspect_ratios x "
                             f"variants) and this server queues at most {self.config.queue_limit}; split it or use "
                             "the batch job", brief.variants)
        await self.accept(requests, caller, self.check_callback(brief.callback_url, caller), api="renders")
        return RendersAccepted(render_ids=[r.render_id for r in requests])

    @app.get("/v1/renders/{render_id}", response_model=RenderStatus,
             responses={401: {"description": "no or wrong bearer token"},
                        404: {"description": "no render with this id among the caller's"}})
    async def get_render(self, render_id: str, caller: Caller = Depends(authenticate)) -> RenderStatus:
        """A render's status; once done, its review tags and asset URLs."""
        record = await self.find(render_id, caller, api=None)
        return status_document(record, self.dam, caller.client_id, self.config.presign_expires_s)

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

    # ----------------------------------------------------------------- accepting (also for jobs/videos.py)

    def check_callback(self, url: str | None, caller: Caller) -> str | None:
        if url is None:
            return None
        if caller.token is None:
            raise body_error("callback_url", "webhooks are signed with the client's token, and an insecure_local "
                             "server has none; leave callback_url out", url)
        try:
            return check_callback_url(url, self.config.callback_allow)
        except CallbackRefused as exc:
            raise body_error("callback_url", str(exc), url) from None

    async def find(self, render_id: str, caller: Caller, api: JobApi | None) -> JobRecord:
        """The caller's job record of ``render_id``, as the DAM has it (every replica answers the same)."""
        record = await asyncio.to_thread(self.jobs.get, render_id) if re.match(RENDER_ID_PATTERN, render_id) else None
        if record is None or caller.client_id not in record.clients or (api is not None and record.api != api):
            raise HTTPException(http_status.HTTP_404_NOT_FOUND, detail=f"no render {render_id!r} among yours")
        return record

    async def accept(self, requests: list[RenderRequest], caller: Caller, callback: str | None, api: JobApi) -> None:
        """Write a job record for each request (the caller joins one that exists) and queue the
        renders the DAM does not have yet; the records are in the DAM before this returns."""
        async with self.accepting:  # one accept at a time: its checks and its writes are one step
            known = await asyncio.gather(*(self._known(r) for r in requests))
            to_write, to_queue = [], []
            for request, (record, archived) in zip(requests, known):
                if record is None or (record.status == "failed" and record.render_id not in self.active):
                    record = JobRecord(render_id=request.render_id, request=request, api=api, clients=[])
                    if archived is None:
                        to_queue.append(record)
                    else:
                        record.finish("done", review=archived.review, keys=archived.keys)
                record.add_client(caller.client_id, callback)
                to_write.append(record)
            mine = sum(caller.client_id in r.clients for r in self.active.values() if r.status == "queued")
            if mine + len(to_queue) > self.config.client_queue_limit:
                raise HTTPException(http_status.HTTP_429_TOO_MANY_REQUESTS, headers={
                    "Retry-After": str(self._retry_after_s())}, detail=f"client {caller.client_id!r} has {mine} "
                    f"renders queued, at most {self.config.client_queue_limit}: wait for some to finish")
            if self.queue.qsize() + len(to_queue) > self.config.queue_limit:
                raise HTTPException(http_status.HTTP_503_SERVICE_UNAVAILABLE,
                                    detail=f"render queue full ({self.queue.qsize()} of {self.config.queue_limit} waiting)",
                                    headers={"Retry-After": str(self._retry_after_s())})
            for record in to_queue:
                record.lineage_run_id = await asyncio.to_thread(self._lineage, record, None)
            await asyncio.gather(*(asyncio.to_thread(self.jobs.put, record) for record in to_write))
            for record in to_queue:
                self._enqueue(record)

    async def _known(self, request: RenderRequest) -> tuple[JobRecord | None, Any]:
        record = self.active.get(request.render_id) or await asyncio.to_thread(self.jobs.get, request.render_id)
        if record is not None and record.status != "failed":
            return record, None
        return record, await asyncio.to_thread(find_archived, self.dam, request)

    # ----------------------------------------------------------------- helpers

    def _enqueue(self, record: JobRecord) -> None:
        if record.render_id not in self.active:
            record.status = "queued"
            self.active[record.render_id] = record
            self.queue.put_nowait(record)

    async def _resume(self) -> None:
        """Queue what an earlier replica accepted and did not finish."""
        for record in await asyncio.to_thread(self.jobs.active):
            self._enqueue(record)
        if self.queue.qsize():
            logger.info("resumed %d render(s) from the DAM's job records", self.queue.qsize())

    def _lineage(self, record: JobRecord, error: str | None) -> str:
        """START (``error`` None, on accept), else COMPLETE or FAIL of the render's lineage run."""
        run = LineageRun(LineageConfig.from_env(f"adhoc.{record.request.campaign_id}.{record.request.brief_id}",
                                                self.config.workdir), JobType.AD_HOC_RENDER,
                         inputs=[checkpoint_dataset(self.config.model, self.config.checkpoint_dir)],
                         outputs=[dam_dataset(self.dam.uri, file_count=len(record.keys) or None)],
                         **({"run_id": record.lineage_run_id} if record.lineage_run_id else {}))
        try:
            if not record.finished:
                run.start()
            else:
                run.started = True  # START went out when the render was accepted
                if record.status == "failed":
                    run.fail(error or "failed")
                else:
                    run.complete()
        finally:
            run.close()
        return run.run_id

    def _retry_after_s(self) -> int:
        per_render = self.seconds_per_render or FIRST_RENDER_ESTIMATE_S
        waiting = self.queue.qsize() + self.running
        low, high = RETRY_AFTER_BOUNDS_S
        return int(min(high, max(low, math.ceil(waiting * per_render / self.config.replicas))))

    def _stopped_workers(self) -> int:
        return sum(worker.done() for worker in self.workers)

    async def _work(self) -> None:
        while True:
            record = await self.queue.get()
            stored = await asyncio.to_thread(self.jobs.get, record.render_id)
            if stored is not None and stored.finished:  # another replica finished it meanwhile
                self.active.pop(record.render_id, None)
                continue
            record.status, record.started_at, started = "running", now(), time.perf_counter()
            self.running += 1
            try:
                await asyncio.to_thread(self.jobs.put, record)
                await self._render(record)
            except Exception as exc:  # noqa: BLE001 - one render that fails is one failed status
                logger.warning("render %s failed: %s", record.render_id, describe_error(exc))
                record.finish("failed", error=describe_error(exc))
            finally:
                self.running -= 1
                self.active.pop(record.render_id, None)
            await asyncio.to_thread(self.jobs.put, record)
            await asyncio.to_thread(self._lineage, record, record.error)
            self.loop.create_task(self._notify(record))
            elapsed = time.perf_counter() - started
            self.seconds_per_render = elapsed if self.seconds_per_render is None else (
                0.8 * self.seconds_per_render + 0.2 * elapsed)

    async def _render(self, record: JobRecord) -> None:
        archived = await asyncio.to_thread(find_archived, self.dam, record.request)
        if archived is not None:  # rendered before a restart, its record not yet updated
            record.finish("done", review=archived.review, keys=archived.keys)
            row = manifest_row(record.request, "skipped", review=archived.review).model_copy(update={
                "dam_uri": self.dam.uri, "keys": archived.keys, "sha256": archived.sha256, "sizes": archived.sizes})
        else:
            table = pa.Table.from_pylist([record.request.model_dump()], schema=RENDER_REQUEST_ARROW_SCHEMA)
            response = self.renderer.remote(table)
            try:
                rendered = await asyncio.wait_for(_awaited(response), self.config.render_timeout_s)
            except asyncio.TimeoutError:
                response.cancel()
                self.stuck_since = self.stuck_since or time.monotonic()
                raise TimeoutError(f"the Renderer call took over render_timeout_s ({self.config.render_timeout_s:g} s) "
                                   "and was cancelled") from None
            self.stuck_since = None
            (out,) = (await asyncio.to_thread(self.archive, rendered)).to_pylist()
            review = ReviewResult.model_validate_json(out["review_json"]) if out["review_json"] else None
            if out["archive_json"]:
                record.finish("done", review=review, keys=ArchiveResult.model_validate_json(out["archive_json"]).keys)
            else:
                record.finish("failed", review=review, error=out["error"] or "the renderer returned no assets")
            row = rendered_manifest_row(record.request, out)
        await asyncio.to_thread(self._merge_manifest, row)

    def _merge_manifest(self, row) -> None:
        with self.manifest_lock:
            merge_into_dam_manifest(self.dam, [row])

    async def _notify(self, record: JobRecord) -> None:
        async def keep(attempt: WebhookAttempt) -> None:
            record.webhook_attempts.append(attempt)
            await asyncio.to_thread(self.jobs.put, record)

        for client, url in record.callbacks.items():
            if client not in self.auth.tokens:  # the client's token was removed since it asked
                await keep(WebhookAttempt(client_id=client, url=url, at=now(), error="the client has no token now"))
                continue
            body = status_document(record, self.dam, client, self.config.presign_expires_s).model_dump_json().encode()
            await deliver(url, body, self.auth.tokens[client].token, client, allow=self.config.callback_allow,
                          deadline_s=self.config.webhook_deadline_s, record=keep)


# --------------------------------------------------------------------------- entry points


def build_application(config: ServeConfig, api_tokens: str | None = None) -> serve.Application:
    """The Serve application. ``api_tokens`` None: each Api replica reads PADDOCK_API_TOKEN
    from its own environment (how RayService pods get it, from a Secret)."""
    generator_config = renderer_config(config)  # a replica too big for the cluster's GPUs stops here
    renderer = Renderer.options(**renderer_options(config.tp_size, config.replicas, generator_config.device)).bind(
        generator_config, config.thresholds, config.profile, config.tp_size)
    return Api.options(num_replicas=config.ingress_replicas).bind(config, renderer, api_tokens)


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for ``serve run jobs.serve_app:build_app`` and RayService
    (args: model, checkpoint_dir, dam, s3_endpoint, tp_size, replicas, queue_limit, insecure_local, ...)."""
    try:
        config = ServeConfig.model_validate(args)
    except ValidationError as exc:
        raise ServeSetupError(f"serve app args: {exc}") from None
    if config.insecure_local and not is_loopback(config.host):
        raise ServeSetupError(f"serve app args: insecure_local serves without auth, so host must be loopback "
                              f"(the address Serve's HTTP proxy binds); got host {config.host!r}")
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
    config = config.model_copy(update={"host": host})
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
