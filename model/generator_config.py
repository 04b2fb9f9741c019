"""GeneratorConfig: how to build one replica's generator (model.generator.AVGenerator), the
settings the model API takes; kept beside the generator so both stay readable."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from model.presets import SR_COMPONENT, Component, ModelName, ModelPreset, get_preset

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class GeneratorConfig(BaseModel):
    """How to build one replica's generator."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelName = "tiny"
    checkpoint_dir: Path | None = Field(
        default=None, description="folder holding the released components (see model/presets.py); not used by 'tiny'"
    )
    paths: dict[Component, Path] = Field(
        default_factory=dict, description="per-component folders overriding <checkpoint_dir>/<default folder>"
    )
    device: str = "cpu"
    dtype: str | None = Field(default=None, description="float32 | bfloat16; default bf16 on CUDA, fp32 else")
    decoder: Literal["auto", "turbo", "full"] = Field(
        default="auto",
        description="video decoder: the distilled TurboVAED (<checkpoint_dir>/turbo_vae/, as the reference), the full "
        "Wan2.2 VAE, or 'auto': TurboVAED when its folder exists (the tiny preset always has one)",
    )
    text_encoder_device: Literal["cpu", "cuda"] | None = Field(
        default=None,
        description="where the replica's one text encoder (on rank 0) runs: cuda (the rank's GPU) or cpu, which frees "
        "its ~18 GB of GPU memory (as the reference does on cards of 48 GB or less) and encodes the next batch while "
        "the GPUs denoise; default: `device`",
    )
    text_cache_size: int = Field(default=256, ge=1)
    sample_rate: int = Field(default=44100, description="delivered audio rate: 44100 or 48000")
    steps: int | None = Field(default=None, ge=1, description="override the preset's base denoising steps")
    sr_steps: int | None = Field(default=None, ge=1, description="override the preset's super-resolution steps")
    sr_resolutions: tuple[Literal["540p", "720p", "1080p"], ...] = Field(
        default=("540p", "720p", "1080p"),
        description="resolutions this replica serves by super-resolution (their models are checked at start)"
    )
    return_latents: bool = Field(default=False, description="keep the final latents on each ClipOutput")
    s3_endpoint: str | None = Field(
        default=None, description="S3 endpoint URL for s3:// reference images; default AWS_ENDPOINT_URL, else AWS"
    )

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str | None) -> str | None:
        if value == "float16":  # fp16's range is too small for these activations
            raise ValueError(
                "GeneratorConfig.dtype='float16' is refused: the reference computes in bfloat16 and the T5Gemma text "
                "encoder overflows in float16; set dtype to 'bfloat16' (the default on CUDA) or 'float32'"
            )
        if value is not None and value not in _DTYPES:
            raise ValueError(f"dtype={value!r} must be one of {sorted(_DTYPES)}")
        return value

    @field_validator("sample_rate")
    @classmethod
    def _rate(cls, value: int) -> int:
        if value not in (44100, 48000):
            raise ValueError(f"sample_rate={value} must be 44100 or 48000")
        return value

    @model_validator(mode="after")
    def _text_device(self) -> "GeneratorConfig":
        if self.text_encoder_device == "cuda" and not self.device.startswith("cuda"):
            raise ValueError(f"text_encoder_device='cuda' needs device='cuda' (device is {self.device!r}); "
                             "set --text-encoder-device cpu or --device cuda")
        return self

    def torch_dtype(self) -> torch.dtype:
        if self.dtype is not None:
            return _DTYPES[self.dtype]
        return torch.bfloat16 if self.device.startswith("cuda") else torch.float32

    def released_paths(self) -> dict[str, Path]:
        """Every component folder of a released preset, checked up front (by a replica, and by a
        job's driver before any work) so a missing one fails before anything loads."""
        preset = get_preset(self.model)
        components = ["dit", "text_encoder", "video_vae", "audio_vae"]
        components += [SR_COMPONENT[r] for r in self.sr_resolutions]
        if self.video_decoder() == "turbo":
            components.append("turbo_vae")
        paths = {c: self.component_path(preset, c) for c in components}
        missing = [f"{c}: {p}" for c, p in paths.items() if not p.is_dir()]
        if missing:
            raise FileNotFoundError(
                f"model {preset.name!r} is missing components (expected folders): {'; '.join(missing)}. "
                "See model/presets.py for the repositories they come from."
            )
        return paths

    def video_decoder(self) -> Literal["turbo", "full"]:
        """The decoder `decoder` resolves to: 'auto' takes TurboVAED when its folder is there."""
        preset = get_preset(self.model)
        if self.decoder != "auto":
            return self.decoder
        if preset.tiny is not None:
            return "turbo"
        return "turbo" if self.component_path(preset, "turbo_vae").is_dir() else "full"

    def component_path(self, preset: ModelPreset, component: str) -> Path:
        if component in self.paths:
            return Path(self.paths[component])
        if self.checkpoint_dir is None:
            raise ValueError(
                f"model {preset.name!r} needs checkpoint_dir (or paths[{component!r}]) pointing at the released weights"
            )
        return Path(self.checkpoint_dir) / preset.folders[component]
