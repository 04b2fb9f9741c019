"""An OpenAI-style video API beside ``/v1/renders``, as vLLM-Omni and the hosted APIs expose it.

- ``POST /v1/videos``: ``prompt``, ``seconds``, ``size`` (``WxH``, one of the delivery sizes, e.g.
  ``448x256`` or ``1280x720``), ``seed``, ``negative_prompt``, an optional ``input_reference``
  (a ``data:image/...;base64,`` URL: the first frame) and ``callback_url`` -> ``{"id", "status": "queued", ...}``;
- ``GET /v1/videos/{id}``; ``GET /v1/videos/{id}/content`` (the MP4 bytes; a redirect to the
  presigned URL for an S3 DAM); ``GET /v1/videos`` (the caller's own).

Same auth, same queue, job records and renderer as ``/v1/renders`` (jobs/serve_app.py's Api):
a video is one render of campaign ``videos`` whose brief id is a hash of the prompt, so it
is a row of the DAM's manifest like any other render. Its id is its render id.
"""

import asyncio
import base64
import binascii
import hashlib
import re
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from jobs.adhoc import body_error, plan_renders
from jobs.auth import Caller, authenticate, current_service, render_caller
from jobs.jobstore import JobRecord
from model.magihuman.sizes import FINAL_SIZES
from pipeline.dam.local import LocalDAM
from schemas.brief import CampaignBrief

VIDEOS_CAMPAIGN = "videos"
SIZES = {f"{w}x{h}": (resolution, aspect) for resolution, by_aspect in FINAL_SIZES.items()
         for aspect, (w, h) in by_aspect.items()}
SizeName = Literal[tuple(sorted(SIZES))]  # type: ignore[valid-type]
_DATA_URL = re.compile(r"^data:image/(png|jpeg|webp);base64,(.+)$", re.S)
MAX_REFERENCE_BYTES = 8 * 1024 * 1024
OPENAI_STATUS = {"queued": "queued", "running": "in_progress", "done": "completed", "failed": "failed"}


class VideoCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=4000)
    model: str | None = Field(None, description="must be the server's model when given")
    seconds: int = Field(4, ge=2, le=15, description="clip length (the hosted APIs send it as a string)")
    size: SizeName = Field("448x256", description="WxH, one of the delivery sizes")
    seed: int | None = Field(None, ge=0)
    negative_prompt: str | None = Field(None, max_length=4000)
    input_reference: str | None = Field(None, description="first frame: a data:image/png|jpeg|webp;base64, URL")
    callback_url: str | None = Field(None, max_length=2000)

    @field_validator("seconds", mode="before")
    @classmethod
    def _seconds_as_text(cls, value: Any) -> Any:
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value


class VideoError(BaseModel):
    code: str
    message: str


class VideoObject(BaseModel):
    id: str
    object: Literal["video"] = "video"
    model: str
    status: Literal["queued", "in_progress", "completed", "failed"]
    created_at: int
    completed_at: int | None = None
    seconds: str
    size: str
    error: VideoError | None = None


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VideoObject]


def video_object(record: JobRecord) -> VideoObject:
    r = record.request
    return VideoObject(
        id=record.render_id, model=r.model_id, status=OPENAI_STATUS[record.status],
        created_at=int(record.submitted_at.timestamp()),
        completed_at=int(record.finished_at.timestamp()) if record.finished_at else None,
        seconds=str(r.duration_s), size=f"{r.width}x{r.height}",
        error=VideoError(code="render_failed", message=record.error) if record.status == "failed" else None)


def _reference_image(service: Any, data_url: str) -> str:
    """Store the first frame in the DAM by its hash; the renderer reads it from there."""
    match = _DATA_URL.match(data_url)
    if not match:
        raise body_error("input_reference", "give the image as a data:image/png|jpeg|webp;base64,... URL", data_url[:64])
    try:
        data = base64.b64decode(match.group(2), validate=True)
    except binascii.Error:
        raise body_error("input_reference", "the base64 after 'base64,' does not decode", data_url[:64]) from None
    if len(data) > MAX_REFERENCE_BYTES:
        raise body_error("input_reference", f"the image is over {MAX_REFERENCE_BYTES} bytes", len(data))
    if not isinstance(service.dam, LocalDAM):
        raise body_error("input_reference", "this server's DAM is S3 and the renderer reads first frames from "
                         "local paths only; leave input_reference out or serve with a local --dam", "(image)")
    key = f"inputs/{hashlib.sha256(data).hexdigest()}.{match.group(1).replace('jpeg', 'jpg')}"
    service.dam.put_bytes(key, data)
    return str(service.dam.root / key)


router = APIRouter(prefix="/v1/videos", tags=["videos"])
AUTH = {401: {"description": "no or wrong bearer token"}}


@router.post("", response_model=VideoObject, responses={**AUTH, 403: {"description": "no render role"},
                                                        422: {"description": "`detail[].loc` names the field"},
                                                        429: {"description": "too many queued"},
                                                        503: {"description": "queue full"}})
async def create_video(body: VideoCreate, caller: Caller = Depends(render_caller),
                       service: Any = Depends(current_service)) -> VideoObject:
    """Queue one clip of ``prompt``; poll ``GET /v1/videos/{id}`` or pass a ``callback_url``."""
    if body.model is not None and body.model != service.config.model:
        raise body_error("model", f"this server renders with {service.config.model!r}; leave model out or use it",
                         body.model)
    resolution, aspect = SIZES[body.size]
    fields = {"brief_id": "v-" + hashlib.sha256(body.prompt.encode()).hexdigest()[:20], "campaign_id": VIDEOS_CAMPAIGN,
              "prompt": body.prompt, "source_locale": "en-US", "duration_s": body.seconds, "resolution": resolution,
              "aspect_ratios": [aspect], "seed": body.seed, "negative_prompt": body.negative_prompt}
    if body.input_reference is not None:
        fields["reference_image_uri"] = _reference_image(service, body.input_reference)
    try:
        brief = CampaignBrief.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        error = exc.errors()[0]
        raise body_error("prompt" if error["loc"][:1] == ("prompt",) else str(error["loc"][0]), error["msg"],
                         None) from None
    (request,) = plan_renders(brief, service.config.model)
    await service.accept([request], caller, service.check_callback(body.callback_url, caller), api="videos")
    return video_object(await service.find(request.render_id, caller, api="videos"))


@router.get("", response_model=VideoList, responses=AUTH)
async def list_videos(caller: Caller = Depends(authenticate), service: Any = Depends(current_service)) -> VideoList:
    """The caller's own videos, newest first."""
    records = await asyncio.to_thread(service.jobs.all)
    mine = [r for r in records if r.api == "videos" and caller.client_id in r.clients]
    return VideoList(data=[video_object(r) for r in sorted(mine, key=lambda r: r.submitted_at, reverse=True)])


@router.get("/{video_id}", response_model=VideoObject, responses={**AUTH, 404: {"description": "not among yours"}})
async def get_video(video_id: str, caller: Caller = Depends(authenticate),
                    service: Any = Depends(current_service)) -> VideoObject:
    return video_object(await service.find(video_id, caller, api="videos"))


@router.get("/{video_id}/content", response_class=FileResponse,
            responses={**AUTH, 404: {"description": "not among yours"}, 409: {"description": "not completed yet"}})
async def video_content(video_id: str, caller: Caller = Depends(authenticate),
                        service: Any = Depends(current_service)) -> Any:
    """The MP4 (a redirect to a presigned URL for an S3 DAM)."""
    record = await service.find(video_id, caller, api="videos")
    if record.status != "done" or "mp4" not in record.keys:
        raise HTTPException(409, detail=f"video {video_id} is {OPENAI_STATUS[record.status]}; fetch it once completed")
    if isinstance(service.dam, LocalDAM):
        return FileResponse(service.dam.root / record.keys["mp4"], media_type="video/mp4")
    return RedirectResponse(service.dam.url(record.keys["mp4"], service.config.presign_expires_s))
