"""Samplers for the MagiHuman DiT, driven only through `dit.velocity(...)`.

Flow matching with x_t = (1 - sigma) * x_0 + sigma * noise and velocity v = noise - x_0, on
the reference's schedule: sigmas linearly from 0.999 to 0 over `steps`, shifted by
shift * s / (1 + (shift - 1) * s), timesteps = int(1000 * sigma).

- "distill": the distilled model's step (8 steps, no CFG): predict x_0, then re-noise it with
  fresh noise to the next sigma.
- "base": UniPC (bh2, order 2, x_0-predicting) with CFG against a null prompt: video guidance
  5.0 while the timestep is above 500 and 2.0 below, audio guidance 5.0.
- "sr": the super-resolution pass (5 steps): UniPC on the video only, the audio latent is a fixed
  condition; CFG only when a null prompt is given (3.5, capped at 2.0 on the first 13 frames).

UniPC comes from diffusers' UniPCMultistepScheduler fed the reference sigmas;
tests/unit/test_sampler.py proves it matches the reference algorithm step for step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UniPCMultistepScheduler

SamplerMode = Literal["distill", "base", "sr"]
Generators = torch.Generator | Sequence[torch.Generator] | None

NUM_TRAIN_TIMESTEPS = 1000
# First sigma of the reference schedule: 1 - 1/1000 as stored in float32.
SIGMA_MAX = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))
DEFAULT_STEPS = {"distill": 8, "base": 32, "sr": 5}


class VelocityModel(Protocol):
    def velocity(self, latent_video, latent_audio, text, text_lens, coords_style=None, frame_receptive_field=None): ...


@dataclass(frozen=True)
class Guidance:
    """CFG scales of the reference evaluation config."""

    video: float = 5.0
    video_low_noise: float = 2.0  # used once the timestep is at or below `switch_timestep`
    switch_timestep: int = 500
    audio: float = 5.0
    sr_video: float = 3.5
    sr_early_frames: int = 13  # the first latent frames get at most `sr_early_frames_cap` (avoids over-exposure)
    sr_early_frames_cap: float = 2.0


def unshifted_sigmas(steps: int) -> np.ndarray:
    """The reference's `steps` sigmas before the shift: linspace(0.999, 0, steps + 1) without the final 0."""
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    return np.linspace(SIGMA_MAX, 0.0, steps + 1)[:-1].copy()


def make_scheduler(steps: int, shift: float, device: torch.device | str | None = None) -> UniPCMultistepScheduler:
    """diffusers UniPC set up as the reference's flow UniPC; `.sigmas` has steps + 1 entries ending in 0."""
    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        solver_order=2,
        solver_type="bh2",
        prediction_type="flow_prediction",
        predict_x0=True,
        lower_order_final=True,
        use_flow_sigmas=True,
        flow_shift=shift,
        final_sigmas_type="zero",
    )
    scheduler.set_timesteps(sigmas=unshifted_sigmas(steps), device=device)
    return scheduler


def _randn_like(x: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Noise shaped like x; a list of generators draws each sample from its own (batch == one by one)."""
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else x.device
        return torch.randn(x.shape, generator=generator, device=gen_device, dtype=x.dtype).to(x.device)
    if len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    return torch.stack(
        [torch.randn(x.shape[1:], generator=g, device=g.device, dtype=x.dtype).to(x.device) for g in generator]
    )


def distill_step(x: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float, noise: torch.Tensor) -> torch.Tensor:
    """The distilled model's step: x_0 = x - sigma * v, re-noised with fresh noise to sigma_next."""
    return sigma_next * noise + (1 - sigma_next) * (x - sigma * velocity)


def _pad_text(text: torch.Tensor, length: int) -> torch.Tensor:
    return F.pad(text, (0, 0, 0, length - text.shape[1]))


@torch.inference_mode()
def denoise(
    dit: VelocityModel,
    latent_video: torch.Tensor,
    latent_audio: torch.Tensor,
    text: torch.Tensor,
    text_lens: Sequence[int],
    steps: int | None = None,
    mode: SamplerMode = "distill",
    shift: float = 5.0,
    null_text: torch.Tensor | None = None,
    null_text_lens: Sequence[int] | None = None,
    video_condition: torch.Tensor | None = None,
    generator: Generators = None,
    guidance: Guidance = Guidance(),
    coords_style: str | None = None,
    frame_receptive_field: int | None = None,
    audio_fixed: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoise initial noise latents into clean latents.

    latent_video [B, C, T, H, W] and latent_audio [B, N, Ca] are the starting noise (the caller
    owns that RNG); text [B, L, Ct] with real lengths `text_lens`. `steps` defaults to the mode's
    (distill 8, base 32, sr 5). `null_text` ([B or 1, L0, Ct], `null_text_lens`) is the negative
    prompt for CFG: required by "base", optional for "sr", ignored by "distill". `video_condition`
    ([B, C, >=1, H, W]) pins the first latent frame (image-to-video). `generator` (one, or one per
    sample) feeds the distilled step's re-noising. `audio_fixed` is the audio-driven mode (the
    reference's is_a2v): `latent_audio` is a clean encoded recording, held as it is at every step
    while the video is denoised to it. Returns (latent_video, latent_audio); in "sr" mode, and
    with `audio_fixed`, the audio comes back unchanged.
    """
    if mode not in DEFAULT_STEPS:
        raise ValueError(f"mode={mode!r} must be one of {sorted(DEFAULT_STEPS)}")
    steps = DEFAULT_STEPS[mode] if steps is None else steps
    batch = latent_video.shape[0]
    text_lens = [int(n) for n in text_lens]
    use_cfg = mode != "distill" and null_text is not None
    if mode == "base" and null_text is None:
        raise ValueError("mode='base' needs null_text and null_text_lens (the negative-prompt embedding) for CFG")
    if use_cfg:
        if null_text_lens is None:
            raise ValueError("null_text_lens must give the real length of each null_text row")
        null_text_lens = [int(n) for n in null_text_lens]
        if null_text.shape[0] == 1 and batch > 1:
            null_text, null_text_lens = null_text.expand(batch, -1, -1), null_text_lens * batch
        length = max(text.shape[1], null_text.shape[1])
        model_text = torch.cat([_pad_text(text, length), _pad_text(null_text.to(text.dtype), length)])
        model_text_lens = text_lens + list(null_text_lens)
    else:
        model_text, model_text_lens = text, text_lens
    if video_condition is not None and (
        video_condition.shape[:2] != latent_video.shape[:2] or video_condition.shape[3:] != latent_video.shape[3:]
    ):
        raise ValueError(
            f"video_condition must be [B, C, >=1, H, W] matching latent_video {list(latent_video.shape)}, "
            f"got {list(video_condition.shape)}"
        )

    video, audio = latent_video.float().clone(), latent_audio.float().clone()
    video_scheduler = make_scheduler(steps, shift, video.device)
    audio_scheduler = make_scheduler(steps, shift, video.device)
    sigmas = video_scheduler.sigmas.tolist()
    sr_video_scale = None
    if mode == "sr" and use_cfg:
        sr_video_scale = torch.full((1, 1, video.shape[2], 1, 1), guidance.sr_video, device=video.device)
        sr_video_scale[:, :, : guidance.sr_early_frames] = min(guidance.sr_early_frames_cap, guidance.sr_video)

    for i, t in enumerate(video_scheduler.timesteps):
        if video_condition is not None:
            video[:, :, :1] = video_condition[:, :, :1]
        repeat = 2 if use_cfg else 1
        v_video, v_audio = dit.velocity(
            video.repeat(repeat, 1, 1, 1, 1),
            audio.repeat(repeat, 1, 1),
            model_text,
            model_text_lens,
            coords_style=coords_style,
            frame_receptive_field=frame_receptive_field,
        )
        if use_cfg:
            (cond_video, uncond_video), (cond_audio, uncond_audio) = v_video.chunk(2), v_audio.chunk(2)
            if mode == "sr":
                video_scale = sr_video_scale
            else:
                video_scale = guidance.video if t > guidance.switch_timestep else guidance.video_low_noise
            v_video = uncond_video + video_scale * (cond_video - uncond_video)
            v_audio = uncond_audio + guidance.audio * (cond_audio - uncond_audio)

        if mode == "distill":
            video = distill_step(video, v_video, sigmas[i], sigmas[i + 1], _randn_like(video, generator))
            if not audio_fixed:
                audio = distill_step(audio, v_audio, sigmas[i], sigmas[i + 1], _randn_like(audio, generator))
        else:
            video = video_scheduler.step(v_video, t, video, return_dict=False)[0]
            if mode != "sr" and not audio_fixed:
                audio = audio_scheduler.step(v_audio, t, audio, return_dict=False)[0]

    if video_condition is not None:
        video[:, :, :1] = video_condition[:, :, :1]
    return video, audio


def zero_snr_signal_levels(num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """sqrt(alpha_cumprod) of the SD-style scaled-linear DDPM schedule rescaled to zero terminal SNR,
    [num_timesteps] from ~1 (t=0) down to 0; the super-resolution re-noising reads one entry."""
    betas = np.linspace(0.00085**0.5, 0.0120**0.5, num_timesteps, dtype=np.float64) ** 2
    levels = torch.tensor(np.cumprod(1.0 - betas), dtype=torch.float32).sqrt()
    first, last = levels[0].clone(), levels[-1].clone()
    return (levels - last) * (first / (first - last))


@torch.inference_mode()
def prepare_sr_latents(
    base_video: torch.Tensor,
    base_audio: torch.Tensor,
    height: int,
    width: int,
    noise_level: int = 220,
    audio_noise_scale: float = 0.7,
    generator: Generators = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of the super-resolution pass from the base pass's clean latents: the video latent
    upsampled (trilinear, aligned corners) to [H, W] and re-noised to zero-SNR level `noise_level`,
    and the audio latent mixed with `audio_noise_scale` of fresh noise (the SR model's audio condition)."""
    video = F.interpolate(
        base_video.float(), size=(base_video.shape[2], height, width), mode="trilinear", align_corners=True
    )
    level = zero_snr_signal_levels()[noise_level].item()
    video = video * level + _randn_like(video, generator) * (1 - level**2) ** 0.5
    audio = _randn_like(base_audio.float(), generator) * audio_noise_scale + base_audio.float() * (1 - audio_noise_scale)
    return video, audio
