"""Clip geometry: pixel sizes, latent shapes and frame/sample counts for one render.

Facts from the released stack:
- video VAE (Wan2.2-TI2V-5B): stride 4 (time) x 16 x 16, 48 latent channels; a latent clip of
  T frames decodes to 4 * (T - 1) + 1 frames;
- the reference's sequence layout (inference/pipeline/video_generate.py, MagiEvaluator.evaluate):
  for s seconds it denoises 25 s + 1 audio latents and (25 s + 1 - 1) // 4 + 1 video latent frames,
  so 5 s is 126 audio latents and 32 latent frames (125 decoded frames);
- DiT video patch 1 x 2 x 2, so latent height/width are even and pixel sizes are multiples of 32;
- audio VAE (Oobleck): one 64-channel latent per 2048 samples at a 51.2 kHz virtual rate, i.e.
  one audio latent per video frame at 25 fps;
- base generation is 256p-class (the reference runs 448x256); super-resolution runs the SR DiT
  at 896x512 (540p), 1280x736 (720p) or 1920x1088 (1080p) for 16:9, and the frames are then
  brought to the exact final size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from schemas.formats import ASPECT_RATIOS, FPS, GENERATION_SIZES, RESOLUTIONS, SR_RESOLUTIONS, delivery_size

VAE_STRIDE = (4, 16, 16)
PATCH_SIZE = (1, 2, 2)
VIDEO_LATENT_CHANNELS = 48
AUDIO_LATENT_CHANNELS = 64
AUDIO_HOP = 2048  # waveform samples per audio latent
AUDIO_VIRTUAL_RATE = AUDIO_HOP * FPS  # 51200 Hz: one audio latent per video frame
TEXT_LENGTH = 640  # text tokens the DiT reads (the reference's t5_gemma_target_length); longer embeddings are trimmed


# The size tables, read from the one definition in schemas/formats.py (its comment says how each
# size was chosen). (width, height) the base DiT generates at, per aspect ratio:
BASE_SIZES: dict[str, tuple[int, int]] = {aspect: sizes["base"] for aspect, sizes in GENERATION_SIZES.items()}

# (width, height) the SR DiT generates at, per resolution and aspect ratio (none at 256p).
SR_SIZES: dict[str, dict[str, tuple[int, int]]] = {
    resolution: {aspect: sizes[resolution] for aspect, sizes in GENERATION_SIZES.items()}
    for resolution in SR_RESOLUTIONS
}

# Exact delivery size per resolution and aspect ratio.
FINAL_SIZES: dict[str, dict[str, tuple[int, int]]] = {
    resolution: {aspect: delivery_size(resolution, aspect) for aspect in ASPECT_RATIOS} for resolution in RESOLUTIONS
}


def _check_size_multiple(width: int, height: int) -> None:
    multiple = VAE_STRIDE[1] * PATCH_SIZE[1]
    if width % multiple or height % multiple:
        raise ValueError(f"generation size {width}x{height} must be a multiple of {multiple} on both sides")


FrameFit = Literal["exact", "dropped_1", "held_1", "held_2"]


@dataclass(frozen=True)
class ClipGeometry:
    """Every size one clip needs, from request parameters to decoded output."""

    aspect_ratio: str
    resolution: str
    frames: int  # delivered video frames: duration * 25, exactly the requested duration at 25 fps
    latent_frames: int  # video latent frames, as the reference lays them out; they decode to `decoded_frames`
    decoded_frames: int  # 4 * (latent_frames - 1) + 1: frames + 1, frames, frames - 1 or frames - 2
    audio_latents: int  # duration * 25 + 1, as the reference: one per 40 ms and one more
    base_size: tuple[int, int]  # (width, height) of the base DiT pass
    sr_size: tuple[int, int] | None  # (width, height) of the SR pass, None at 256p
    final_size: tuple[int, int]  # (width, height) of the delivered frames

    @property
    def frame_fit(self) -> FrameFit:
        """How the decoded frames become the delivered ones: as they are, the one extra dropped, or
        the last frame held for the one or two missing (at most 80 ms)."""
        return {1: "dropped_1", 0: "exact", -1: "held_1", -2: "held_2"}[self.decoded_frames - self.frames]

    @property
    def base_latent_hw(self) -> tuple[int, int]:
        return self.base_size[1] // VAE_STRIDE[1], self.base_size[0] // VAE_STRIDE[2]

    @property
    def sr_latent_hw(self) -> tuple[int, int] | None:
        if self.sr_size is None:
            return None
        return self.sr_size[1] // VAE_STRIDE[1], self.sr_size[0] // VAE_STRIDE[2]

    def pass_tokens(self, latent_hw: tuple[int, int]) -> int:
        """Video and audio tokens one clip puts through a DiT pass over latents of `latent_hw`."""
        h, w = latent_hw
        return self.latent_frames * (h // PATCH_SIZE[1]) * (w // PATCH_SIZE[2]) + self.audio_latents

    @property
    def dit_tokens(self) -> int:
        """Tokens of the clip's largest DiT pass (super-resolution's when it has one): what one clip
        adds to a forward's activations (model/memory.py; pipeline/generate.py packs batches by it)."""
        return self.pass_tokens(self.sr_latent_hw or self.base_latent_hw)

    @property
    def decode_size(self) -> tuple[int, int]:
        """(width, height) the VAE decodes to, before the final resize."""
        return self.sr_size or self.base_size

    def audio_samples(self, sample_rate: int) -> int:
        """Samples of delivered audio at `sample_rate`: exactly the video's duration (frames / 25 s).
        The decoded audio (audio_latents * 40 ms) is one latent longer and is cut to this."""
        return self.frames * sample_rate // FPS


def frame_count(duration_s: float) -> int:
    """Delivered frames for `duration_s` at 25 fps."""
    frames = round(duration_s * FPS)
    if frames < 1:
        raise ValueError(f"duration_s={duration_s} is too short: at least one frame (0.04 s) is needed")
    return frames


def clip_geometry(
    duration_s: float,
    aspect_ratio: str,
    resolution: str = "256p",
    base_sizes: dict[str, tuple[int, int]] | None = None,
    sr_sizes: dict[str, dict[str, tuple[int, int]]] | None = None,
    final_sizes: dict[str, dict[str, tuple[int, int]]] | None = None,
) -> ClipGeometry:
    """Geometry for one clip. The size tables default to the released stack's; tests and the tiny
    preset may pass smaller ones (they must keep the 32-pixel multiple)."""
    base_sizes = base_sizes or BASE_SIZES
    sr_sizes = sr_sizes or SR_SIZES
    final_sizes = final_sizes or FINAL_SIZES
    if aspect_ratio not in base_sizes:
        raise ValueError(f"aspect_ratio={aspect_ratio!r} is not supported; use one of {sorted(base_sizes)}")
    if resolution not in final_sizes:
        raise ValueError(f"resolution={resolution!r} is not supported; use one of {sorted(final_sizes)}")

    frames = frame_count(duration_s)
    audio_latents = frames + 1  # the reference's num_frames = seconds * fps + 1
    latent_frames = (audio_latents - 1) // VAE_STRIDE[0] + 1
    decoded_frames = VAE_STRIDE[0] * (latent_frames - 1) + 1
    base_size = base_sizes[aspect_ratio]
    sr_size = sr_sizes[resolution][aspect_ratio] if resolution in sr_sizes else None
    for size in (base_size, sr_size):
        if size is not None:
            _check_size_multiple(*size)
    return ClipGeometry(
        aspect_ratio=aspect_ratio,
        resolution=resolution,
        frames=frames,
        latent_frames=latent_frames,
        decoded_frames=decoded_frames,
        audio_latents=audio_latents,
        base_size=base_size,
        sr_size=sr_size,
        final_size=final_sizes[resolution][aspect_ratio],
    )
