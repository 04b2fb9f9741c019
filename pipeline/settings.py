"""The settings every rendering job shares, validated once: :class:`RenderSettings`.

The campaign batch job's ``CampaignConfig`` (pipeline/run.py) and the server's
``ServeConfig`` (jobs/serve_app.py) extend it with what is theirs alone; the
CLI fills both from the same flags (``--tp`` is ``tp_size``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from model.presets import ModelName
from pipeline.mux import CHANNEL_PROFILES
from pipeline.review import ReviewThresholds


class RenderSettings(BaseModel):
    """Which model renders where, how it is placed, where the clips go and how they are judged."""

    model_config = ConfigDict(extra="forbid")

    model: ModelName = "tiny"
    checkpoint_dir: Path | None = Field(None, description="folder with the released weights (see README)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: cuda when the Ray cluster has GPUs when the job starts, else cpu")
    dam: str = Field("./dam", description="a directory, file:///abs/path or s3://bucket/prefix")
    s3_endpoint: str | None = Field(None, description="endpoint URL of an S3-compatible store")
    decoder: Literal["auto", "turbo", "full"] = Field(
        "auto", description="video decoder: TurboVAED (turbo_vae/), the full Wan2.2 VAE, or auto (turbo when present)")
    tp_size: int = Field(1, ge=1, description="tensor-parallel ranks per model replica")
    text_encoder_device: Literal["cpu", "cuda"] | None = Field(
        None, description="where each replica's one text encoder runs (GeneratorConfig.text_encoder_device); default: device")
    replicas: int = Field(1, ge=1, description="model replicas")
    profile: str = Field("web", description="loudness profile of the deliverables: web | broadcast")
    thresholds: ReviewThresholds = ReviewThresholds()

    @field_validator("profile")
    @classmethod
    def _profile(cls, value: str) -> str:
        if value not in CHANNEL_PROFILES:
            raise ValueError(f"profile={value!r} is not one of {', '.join(CHANNEL_PROFILES)}")
        return value
