"""RenderRequest: one clip to make, the unit every stage after expand works on."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas.arrow import arrow_schema
from schemas.brief import MAIN_VARIANT_ID, DialogueLine
from schemas.formats import FPS, AspectRatio, Resolution


class VoiceoverAudio(BaseModel):
    """A supplied recording as ingest read it: where it is, the SHA-256 of its bytes (a render
    checks the file it reads is the one planned) and its length.

    The clip lasts ``frames`` = round(seconds * 25) whole frames (at most 20 ms off the recording);
    the recording is delivered trimmed or padded with silence to exactly frames / 25 s."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str
    sha256: str
    seconds: float = Field(description="the recording's own length")
    frames: int = Field(description="delivered video frames at 25 fps")

    @property
    def delivered_s(self) -> float:
        return self.frames / FPS


PromptSource = str  # "template", "llm", or "template (fallback: <reason>)"


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
    duration_s: int = Field(description="the brief's duration; a voice-over clip lasts voiceover.frames / 25 s "
                            "and has the recording's length rounded to whole seconds here")
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
    voiceover: VoiceoverAudio | None = Field(None, description="the recording that drives this clip, if any")
    prompt_source: PromptSource = Field("template", description="who wrote `prompt`: the template composer or the "
                                        "prompt LLM (set by the enhance stage, with a fallback's reason)")

    @property
    def num_frames(self) -> int:
        """Delivered frames: exactly the requested duration at 25 fps, or the voice-over's."""
        return self.voiceover.frames if self.voiceover is not None else self.duration_s * FPS

    @property
    def clip_seconds(self) -> float:
        """The delivered duration: num_frames / 25."""
        return self.num_frames / FPS


RENDER_REQUEST_ARROW_SCHEMA = arrow_schema(RenderRequest)
