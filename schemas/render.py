"""RenderRequest: one clip to make, the unit every stage after expand works on."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas.arrow import arrow_schema
from schemas.brief import MAIN_VARIANT_ID, DialogueLine
from schemas.formats import FPS, AspectRatio, Resolution


class RenderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    render_id: str
    brief_id: str
    campaign_id: str
    row_index: int = Field(description="0-based row of the brief in the briefs file")
    locale: str
    language: str
    aspect_ratio: AspectRatio
    resolution: Resolution
    width: int = Field(description="final delivered width")
    height: int
    duration_s: int
    seed: int
    variant_id: str = Field(MAIN_VARIANT_ID, description="the brief's creative variant this clip renders")
    take: int = Field(0, description="0-based take: the clip's seed is the brief's seed + take")
    prompt: str = Field(description="the composed model prompt (scene, Dialogue, Background Sound)")
    dialogue: list[DialogueLine]
    background_sound: str | None = None
    reference_image_uri: str | None = None
    forbidden_terms: list[str]
    model_id: str
    negative_prompt: str | None = Field(None, description="what CFG steers away from (models with CFG only)")
    audio: bool = Field(True, description="false: the clip is delivered silent")

    @property
    def num_frames(self) -> int:
        """Delivered frames: exactly the requested duration at 25 fps."""
        return self.duration_s * FPS


RENDER_REQUEST_ARROW_SCHEMA = arrow_schema(RenderRequest)
