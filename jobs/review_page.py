"""The reviewers' gate: the page at ``/review`` and the API behind it.

Routes (mounted by the Serve app, jobs/serve_app.py, and by ``paddock review`` alone, :func:`serve_review`):

- ``GET /review``: the page (no auth itself; it asks for a review token and keeps it in the tab);
- ``GET /v1/review/renders``: every render of the DAM's manifest with asset URLs (review role);
- ``GET /v1/review/assets/{key}``: a local DAM's file, by a signed, expiring URL (S3 DAMs get presigned URLs);
- ``POST /v1/renders/{render_id}/review``: a decision (review role; pipeline/decisions.py writes it);
- ``GET /v1/renders/{render_id}/review``: the render's decision log (review role).

``retake`` writes a queued job record for the next unused take (jobs/jobstore.py); the Serve app
also queues it at once, and ``paddock review`` alone leaves it for the next ``paddock serve``
on that DAM, which resumes it. A render a batch run made has no job record (its request is in
that run's requests.parquet): a retake of it answers 409.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from pydantic import BaseModel

from jobs.auth import Authenticator, Caller, current_service, parse_api_tokens, review_caller
from jobs.jobstore import JobRecord, JobStore
from pipeline.dam import DAM, open_dam
from pipeline.dam.local import LocalDAM
from pipeline.decisions import DecisionEntry, DecisionRequest, UnknownRender, decide, find_row, next_take, read_decisions
from pipeline.expand import with_take
from pipeline.lineage import LineageConfig
from pipeline.manifest import ManifestRow
from pipeline.reports import read_campaign_manifest, read_dam_manifest

ASSET_URL_LIFETIME_S = 3600
RENDER_ID_PATTERN = r"^r[0-9a-f]{23}$"


class AssetSigner:
    """Expiring HMAC-signed URLs for a local DAM's files (a <video> element sends no bearer token)."""

    def __init__(self, secret: bytes):
        self.secret = secret

    def _sig(self, key: str, expires: int) -> str:
        return hmac.new(self.secret, f"{key}|{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, key: str, lifetime_s: int = ASSET_URL_LIFETIME_S) -> str:
        expires = int(time.time()) + lifetime_s
        return f"/v1/review/assets/{key}?exp={expires}&sig={self._sig(key, expires)}"

    def check(self, key: str, expires: int, sig: str) -> None:
        if expires < time.time() or not hmac.compare_digest(sig, self._sig(key, expires)):
            raise HTTPException(403, detail="asset URL expired or not signed here; reload the review page")


def asset_secret(dam: DAM, tokens: dict) -> bytes:
    """The same secret in every replica of one deployment (the DAM and the tokens), unknown to callers."""
    return hashlib.sha256("|".join(["paddock-assets", dam.uri, *sorted(t.token for t in tokens.values())]).encode()).digest()


class ReviewItem(ManifestRow):
    """A manifest row as the review page shows it."""

    assets: dict[str, str] = {}
    retake_possible: bool = False


class DecisionAnswer(BaseModel):
    entry: DecisionEntry
    review_status: str | None
    retake_render_id: str | None = None


class ReviewDesk:
    """The review gate over one DAM: what the page lists, and the decisions it sends."""

    def __init__(self, dam: DAM, signer: AssetSigner, workdir: Path, *, presign_expires_s: int = ASSET_URL_LIFETIME_S,
                 on_retake: Callable[[JobRecord], None] | None = None):
        self.dam, self.signer, self.workdir = dam, signer, workdir
        self.jobs = JobStore(dam)
        self.presign_expires_s, self.on_retake = presign_expires_s, on_retake

    def asset_url(self, key: str) -> str:
        return self.signer.url(key) if isinstance(self.dam, LocalDAM) else self.dam.url(key, self.presign_expires_s)

    def items(self) -> list[ReviewItem]:
        return [ReviewItem(**row.model_dump(), assets={ext: self.asset_url(key) for ext, key in row.keys.items()},
                           retake_possible=self.dam.head(JobStore.key(row.render_id)) is not None)
                for row in read_dam_manifest(self.dam).values() if row.keys]

    def decide(self, render_id: str, body: DecisionRequest, caller: Caller) -> DecisionAnswer:
        try:
            row = find_row(self.dam, render_id)
        except UnknownRender as exc:
            raise HTTPException(404, detail=str(exc)) from None
        retake = self._retake(row, caller) if body.decision == "retake" else None
        entry, decided = decide(self.dam, render_id, body, caller.client_id, retake_render_id=retake and retake.render_id,
                                lineage=LineageConfig.from_env(f"review.{row.campaign_id}.{row.brief_id}", self.workdir))
        if retake is not None and self.on_retake is not None:
            self.on_retake(retake)
        return DecisionAnswer(entry=entry, review_status=decided.review_status,
                              retake_render_id=retake.render_id if retake else None)

    def _retake(self, row: ManifestRow, caller: Caller) -> JobRecord:
        original = self.jobs.get(row.render_id)
        if original is None:
            raise HTTPException(409, detail=f"render {row.render_id} was made by a batch run, whose request is in "
                                            "that run's requests.parquet: raise the brief's `takes` and run it again")
        # The takes of the row's group are all in its campaign: that campaign's row groups alone are read.
        takes = list(read_campaign_manifest(self.dam, row.campaign_id).values())
        request = with_take(original.request, next_take(takes, row))
        record = JobRecord(render_id=request.render_id, request=request, api=original.api, clients=[caller.client_id])
        for client in original.clients:
            record.add_client(client, original.callbacks.get(client))
        self.jobs.put(record)
        return record


router = APIRouter()
NEEDS_REVIEW_ROLE = {401: {"description": "no or wrong bearer token"},
                     403: {"description": "the token lacks the review role"}}


@router.get("/review", response_class=HTMLResponse, include_in_schema=False)
async def review_page() -> HTMLResponse:
    return HTMLResponse(PAGE)


@router.get("/v1/review/renders", response_model=list[ReviewItem], responses=NEEDS_REVIEW_ROLE)
def list_for_review(caller: Caller = Depends(review_caller), service: Any = Depends(current_service)) -> list[ReviewItem]:
    """Every render of the DAM's manifest that has assets, with URLs the page can play."""
    return service.desk.items()


@router.get("/v1/review/assets/{key:path}", include_in_schema=False)
def review_asset(key: str, exp: int = Query(...), sig: str = Query(...),
                 service: Any = Depends(current_service)) -> FileResponse:
    desk: ReviewDesk = service.desk
    desk.signer.check(key, exp, sig)
    if not isinstance(desk.dam, LocalDAM):
        return RedirectResponse(desk.dam.url(key, desk.presign_expires_s))
    path = desk.dam.root / key
    if ".." in Path(key).parts or not path.is_file():
        raise HTTPException(404, detail=f"no object {key!r} in the DAM")
    return FileResponse(path)


@router.post("/v1/renders/{render_id}/review", response_model=DecisionAnswer,
             responses={**NEEDS_REVIEW_ROLE, 404: {"description": "no such render in the DAM's manifest"},
                        409: {"description": "retake of a render with no job record (a batch render)"}})
def review_render(body: DecisionRequest, render_id: str,
                  caller: Caller = Depends(review_caller), service: Any = Depends(current_service)) -> DecisionAnswer:
    """A person's decision: approved, rejected (with a note) or retake (the next take is queued)."""
    return service.desk.decide(render_id, body, caller)


@router.get("/v1/renders/{render_id}/review", response_model=list[DecisionEntry], responses=NEEDS_REVIEW_ROLE)
def decision_log(render_id: str, caller: Caller = Depends(review_caller),
                 service: Any = Depends(current_service)) -> list[DecisionEntry]:
    """The render's decision log, oldest first."""
    try:
        return read_decisions(service.desk.dam, find_row(service.desk.dam, render_id))
    except UnknownRender as exc:
        raise HTTPException(404, detail=str(exc)) from None


class ReviewService:
    """What ``paddock review`` alone serves: the gate over a DAM, with no renderer."""

    def __init__(self, dam_uri: str, *, s3_endpoint: str | None, api_tokens: str | None, insecure_local: bool,
                 host: str, workdir: Path):
        tokens = {} if insecure_local else parse_api_tokens(api_tokens)
        self.auth = Authenticator(tokens, insecure_local=insecure_local, bind_host=host)
        dam = open_dam(dam_uri, s3_endpoint=s3_endpoint)
        self.desk = ReviewDesk(dam, AssetSigner(asset_secret(dam, tokens)), workdir)


def review_app(service: ReviewService) -> FastAPI:
    app = FastAPI(title="paddock review", version="1")
    app.include_router(router)
    app.dependency_overrides[current_service] = lambda: service
    return app


def serve_review(service: ReviewService, *, host: str, port: int, log: Callable[[str], None] = print) -> None:
    """``paddock review``: serve the page and its API until interrupted."""
    import uvicorn

    log(f"paddock review: http://{host}:{port}/review (DAM {service.desk.dam.uri})")
    uvicorn.run(review_app(service), host=host, port=port, log_level="warning")


PAGE = (Path(__file__).with_name("review_page.html")).read_text(encoding="utf-8")
