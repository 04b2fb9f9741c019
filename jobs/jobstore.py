"""The ad-hoc service's memory, kept in the DAM: one job record per accepted render.

A record (``jobs/<render_id>.json`` under the DAM root) holds the request, the clients
that asked for it (with their callback URLs), its status and times, the review and the
archived keys once done, and every webhook attempt. The server writes it before it
answers 202, updates it as the render runs, and reads it to answer
``GET /v1/renders/{id}``, so every ingress replica gives the same answer and a restarted
or redeployed service resumes what was queued or running (:meth:`JobStore.active`).

Limits: the DAM offers no lock, so two ingress replicas that start at the same moment may both
resume one record; a worker re-reads the record and checks the DAM for the render's completion
record before it renders, so a render is made twice at worst, never lost, and its archive is
idempotent. The per-client quota counts the renders queued in one replica.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.dam import DAM
from pipeline.review import ReviewResult
from schemas.render import RenderRequest

JOBS_PREFIX = "jobs"
JobStatus = Literal["queued", "running", "done", "failed"]
JobApi = Literal["renders", "videos"]


def now() -> datetime:
    return datetime.now(timezone.utc)


class WebhookAttempt(BaseModel):
    """One POST of a status document to a client's callback URL."""

    client_id: str
    url: str
    at: datetime
    status_code: int | None = None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class JobRecord(BaseModel):
    """One accepted render, as the DAM keeps it."""

    model_config = ConfigDict(extra="forbid")

    render_id: str
    request: RenderRequest
    api: JobApi = Field("renders", description="the API that accepted it: /v1/renders or /v1/videos")
    clients: list[str] = Field(description="the clients that asked for it (each sees it)")
    callbacks: dict[str, str] = Field({}, description="client id -> callback URL")
    status: JobStatus = "queued"
    submitted_at: datetime = Field(default_factory=now)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    review: ReviewResult | None = None
    keys: dict[str, str] = {}
    error: str | None = None
    lineage_run_id: str | None = None
    webhook_attempts: list[WebhookAttempt] = []

    def add_client(self, client_id: str, callback_url: str | None) -> None:
        if client_id not in self.clients:
            self.clients.append(client_id)
        if callback_url is not None:
            self.callbacks[client_id] = callback_url

    def finish(self, status: JobStatus, *, review: ReviewResult | None = None, keys: dict[str, str] | None = None,
               error: str | None = None) -> None:
        self.status, self.review, self.keys, self.error = status, review, keys or {}, error
        self.finished_at = now()

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed")


class JobStore:
    """Read and write job records. Writes of one store are serialized, and each writes the
    record as it is when the write runs, so a later write never carries older state."""

    def __init__(self, dam: DAM):
        self.dam = dam
        self._lock = threading.Lock()

    @staticmethod
    def key(render_id: str) -> str:
        return f"{JOBS_PREFIX}/{render_id}.json"

    def put(self, record: JobRecord) -> None:
        with self._lock:
            self.dam.put_bytes(self.key(record.render_id), record.model_dump_json(indent=1).encode(),
                               content_type="application/json")

    def get(self, render_id: str) -> JobRecord | None:
        data = self.dam.get_bytes(self.key(render_id))
        return JobRecord.model_validate_json(data) if data is not None else None

    def all(self) -> list[JobRecord]:
        records = (self.dam.get_bytes(key) for key in self.dam.list_keys(JOBS_PREFIX) if key.endswith(".json"))
        return [JobRecord.model_validate_json(data) for data in records if data is not None]

    def active(self) -> list[JobRecord]:
        """Records queued or running, oldest first: what a starting service resumes."""
        return sorted((r for r in self.all() if not r.finished), key=lambda r: r.submitted_at)


class RenderStatus(BaseModel):
    """``GET /v1/renders/{render_id}``, and the body of its webhooks."""

    render_id: str
    status: JobStatus
    campaign_id: str
    brief_id: str
    variant_id: str
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
    started_at: datetime | None = None
    finished_at: datetime | None = None
    webhook_attempts: list[WebhookAttempt] = Field([], description="the caller's own webhook attempts")


def status_document(record: JobRecord, dam: DAM, client_id: str, presign_expires_s: int) -> RenderStatus:
    review = record.review
    return RenderStatus(
        **record.request.model_dump(include={"render_id", "campaign_id", "brief_id", "variant_id", "locale",
                                             "aspect_ratio", "take", "seed", "model_id"}),
        status=record.status, review_status=review.review_status if review else None,
        review_reasons=review.review_reasons if review else [], review=review,
        assets={ext: dam.url(key, presign_expires_s) for ext, key in record.keys.items()},
        error=record.error, submitted_at=record.submitted_at, started_at=record.started_at,
        finished_at=record.finished_at,
        webhook_attempts=[a for a in record.webhook_attempts if a.client_id == client_id])
