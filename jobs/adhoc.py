"""What an ad-hoc caller sends: the brief of ``POST /v1/renders`` (:class:`AdHocBrief`) and how
a brief becomes render requests (:func:`plan_renders`); jobs/videos.py builds its briefs here too."""

from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, field_validator, model_validator

from pipeline.expand import expand_brief
from pipeline.ingest import check_locales, variant_locale_fault
from schemas.brief import CampaignBrief
from schemas.render import RenderRequest


class AdHocBrief(CampaignBrief):
    """A brief as posted to ``POST /v1/renders``: the fields of a briefs-file row (null means
    "not given"), without a reference image, which this endpoint would have to read from the
    server's own disk; and where to POST the status once each render is done or failed."""

    callback_url: str | None = Field(None, max_length=2000, description="webhook target (https; see jobs/webhooks.py)")

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

    @field_validator("voiceovers")
    @classmethod
    def _no_voiceovers(cls, value: list | None) -> None:
        if value is not None:  # ingest reads and checks recordings at plan time; this endpoint has no plan
            raise ValueError("the ad-hoc endpoint does not take voice-overs; leave them out or use the batch job")
        return value


class RendersAccepted(BaseModel):
    render_ids: list[str]


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
    # A creative variant must render in every kept locale, as the batch job's ingest checks it.
    for index, variant in enumerate(brief.variants or []):
        fault = variant_locale_fault(brief, variant, kept)
        if fault:
            raise RequestValidationError([{"type": "value_error", "loc": ("body", "variants", index), "msg": fault,
                                           "input": variant.variant_id}])
    return expand_brief(brief.model_copy(update={"locales": kept}), row_index=0, model_id=model_id)


def body_error(field: str, message: str, value: Any) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("body", field), "msg": message, "input": value}])
