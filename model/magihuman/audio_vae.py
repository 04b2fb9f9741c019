"""stable-audio-open Oobleck VAE through diffusers' AutoencoderOobleck, plus a band-limited resampler.

The Oobleck VAE maps 2048 waveform samples to one 64-channel latent. MagiHuman trains it on audio
at a 51.2 kHz *virtual* rate, so one latent spans 40 ms, exactly one video frame at 25 fps. The
decoded waveform is therefore 51.2 kHz audio and is resampled to the delivery rate (44.1 kHz,
or 48 kHz) with a windowed-sinc polyphase filter.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderOobleck

from .sizes import AUDIO_HOP, AUDIO_LATENT_CHANNELS, AUDIO_VIRTUAL_RATE


@lru_cache(maxsize=8)
def _polyphase_kernel(up: int, down: int, zero_crossings: int, rolloff: float, beta: float) -> torch.Tensor:
    """Conv kernel [up, 1, 2W + down] (float64) whose row r computes output samples r, r+up, ...

    Output sample n sits at input position t = n * down / up. With phase p = (n * down) % up and
    i = floor(t), y[n] = sum_j x[i - W + 1 + j] * h(p / up + W - 1 - j), where h is a Kaiser-windowed
    sinc low-pass at `rolloff` times the lower of the two Nyquist frequencies. For n = r + m * up,
    i = m * down + (r * down) // up, so every row is a strided (stride `down`) correlation with the
    row's taps shifted by its own offset.
    """
    cutoff = rolloff * min(1.0, up / down)  # fraction of the input Nyquist
    half_width = math.ceil(zero_crossings / cutoff)
    taps = torch.arange(2 * half_width, dtype=torch.float64)
    rows = torch.arange(up)
    phase = (rows * down) % up
    offset = (rows * down) // up
    tau = phase[:, None].double() / up + (half_width - 1) - taps[None, :]  # [up, 2W]
    window = torch.special.i0(beta * torch.sqrt((1 - (tau / half_width) ** 2).clamp(min=0))) / torch.special.i0(
        torch.tensor(beta, dtype=torch.float64)
    )
    taps_per_row = cutoff * torch.sinc(cutoff * tau) * window
    kernel = torch.zeros(up, 1, 2 * half_width + down, dtype=torch.float64)
    for r in range(up):
        kernel[r, 0, offset[r] : offset[r] + 2 * half_width] = taps_per_row[r]
    return kernel


def resample(
    waveform: torch.Tensor,
    orig_rate: int,
    new_rate: int,
    zero_crossings: int = 64,
    rolloff: float = 0.95,
    beta: float = 8.6,
) -> torch.Tensor:
    """Band-limited resampling of `waveform` [..., samples] from `orig_rate` to `new_rate`.

    Output length is ceil(samples * new_rate / orig_rate). The default filter keeps the passband
    flat to ~0.9 of the lower Nyquist and attenuates above it by ~85 dB (Kaiser beta 8.6).
    """
    if orig_rate == new_rate:
        return waveform
    g = math.gcd(orig_rate, new_rate)
    up, down = new_rate // g, orig_rate // g
    kernel = _polyphase_kernel(up, down, zero_crossings, rolloff, beta).to(waveform.device, torch.float32)
    half_width = (kernel.shape[-1] - down) // 2

    lead = waveform.shape[:-1]
    x = waveform.reshape(-1, 1, waveform.shape[-1]).float()
    n_in = x.shape[-1]
    n_out = math.ceil(n_in * up / down)
    periods = math.ceil(n_out / up)
    needed = (periods - 1) * down + kernel.shape[-1]
    x = F.pad(x, (half_width - 1, max(0, needed - n_in - (half_width - 1))))
    y = F.conv1d(x, kernel, stride=down)[..., :periods]  # [N, up, periods]
    y = y.transpose(1, 2).reshape(x.shape[0], periods * up)[:, :n_out]
    return y.reshape(*lead, n_out).to(waveform.dtype)


@dataclass(frozen=True)
class TinyOobleckConfig:
    """Narrow Oobleck VAE with the released hop (2 * 4 * 4 * 8 * 8 = 2048) and 64 latent channels."""

    encoder_hidden_size: int = 4
    decoder_channels: int = 4
    channel_multiples: tuple[int, ...] = (1, 2, 2, 2, 2)


class AudioVAE:
    """Decodes [B, N, 64] audio latents (one per video frame) to waveforms at a delivery rate."""

    def __init__(self, vae: AutoencoderOobleck, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        hop = math.prod(vae.config.downsampling_ratios)
        if hop != AUDIO_HOP or vae.config.decoder_input_channels != AUDIO_LATENT_CHANNELS:
            raise ValueError(
                f"audio VAE has hop {hop} and {vae.config.decoder_input_channels} latent channels; "
                f"MagiHuman needs hop {AUDIO_HOP} and {AUDIO_LATENT_CHANNELS} channels (stable-audio-open-1.0's VAE)"
            )
        if vae.dtype != dtype:  # from_pretrained already loaded the right dtype
            vae = vae.to(dtype=dtype)
        self.vae = vae.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.dtype = dtype
        self.channels = vae.config.audio_channels

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> AudioVAE:
        """Load the diffusers-format VAE folder (stabilityai/stable-audio-open-1.0, subfolder vae/)."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"audio VAE: expected a diffusers AutoencoderOobleck folder with config.json at {path} "
                "(the vae/ folder of stabilityai/stable-audio-open-1.0)"
            )
        vae = AutoencoderOobleck.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
        return cls(vae, device=device, dtype=dtype)

    @classmethod
    def tiny(
        cls, config: TinyOobleckConfig = TinyOobleckConfig(), device: str | torch.device = "cpu", seed: int = 0
    ) -> AudioVAE:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderOobleck(
                encoder_hidden_size=config.encoder_hidden_size,
                downsampling_ratios=[2, 4, 4, 8, 8],
                channel_multiples=list(config.channel_multiples),
                decoder_channels=config.decoder_channels,
                decoder_input_channels=AUDIO_LATENT_CHANNELS,
                audio_channels=2,
                sampling_rate=AUDIO_VIRTUAL_RATE,
            )
        return cls(vae, device=device, dtype=torch.float32)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, sample_rate: int = 44100) -> torch.Tensor:
        """[B, N, 64] latents -> float32 waveforms [B, N * sample_rate / 25, channels] on the CPU."""
        z = latents.transpose(1, 2).to(self.device, self.dtype)
        waveform = self.vae.decode(z).sample.float()  # [B, C, N * 2048] at the 51.2 kHz virtual rate
        waveform = resample(waveform, AUDIO_VIRTUAL_RATE, sample_rate)
        return waveform.transpose(1, 2).contiguous().cpu()
