"""stable-audio-open Oobleck VAE through diffusers' AutoencoderOobleck, plus a band-limited resampler.

It loads from stabilityai/stable-audio-open-1.0 as downloaded: the repository root, as the
reference reads it (model_config.json + model.safetensors, the VAE's weights under the
`pretransform.model.` prefix in stable-audio-tools' module names, renamed to diffusers' on load, as
diffusers' scripts/convert_stable_audio.py does), or its diffusers `vae/` folder.

The Oobleck VAE maps 2048 waveform samples to one 64-channel latent. MagiHuman trains it on audio
at a 51.2 kHz *virtual* rate, so one latent spans 40 ms, exactly one video frame at 25 fps. The
decoded waveform is therefore 51.2 kHz audio and is resampled to the delivery rate (44.1 kHz,
or 48 kHz) with a windowed-sinc polyphase filter.
"""

from __future__ import annotations

import json
import math
import os
import re
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


STABLE_AUDIO_CONFIG = "model_config.json"
STABLE_AUDIO_WEIGHTS = "model.safetensors"
STABLE_AUDIO_VAE_PREFIX = "pretransform.model."


def _stable_audio_key(key: str, blocks: int) -> str:
    """stable-audio-tools' Oobleck name (after the prefix) -> AutoencoderOobleck's. Encoder and
    decoder are one `layers` Sequential each: a conv, `blocks` blocks, a snake, a conv. An encoder
    block is 3 residual units, a snake, a strided conv; a decoder block is a snake, a transposed
    conv, 3 residual units; a residual unit is snake, conv, snake, conv."""
    side, index, rest = re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.(.*)", key).groups()
    index = int(index)
    if index == 0:
        return f"{side}.conv1.{rest}"
    if index == blocks + 1:
        return f"{side}.snake1.{rest}"
    if index == blocks + 2:
        return f"{side}.conv2.{rest}"
    part, inner = re.fullmatch(r"layers\.(\d+)\.(.*)", rest).groups()
    part = int(part)
    units = (0, 1, 2) if side == "encoder" else (2, 3, 4)
    if part in units:
        unit_part, tail = re.fullmatch(r"layers\.(\d+)\.(.*)", inner).groups()
        name = ("snake1", "conv1", "snake2", "conv2")[int(unit_part)]
        return f"{side}.block.{index - 1}.res_unit{units.index(part) + 1}.{name}.{tail}"
    name = {3: "snake1", 4: "conv1"}[part] if side == "encoder" else {0: "snake1", 1: "conv_t1"}[part]
    return f"{side}.block.{index - 1}.{name}.{inner}"


def load_stable_audio_root(path: Path) -> AutoencoderOobleck:
    """The Oobleck VAE of a stable-audio-open-1.0 repository root (in the file's dtype), reading only
    its VAE's tensors."""
    from safetensors import safe_open

    config_path = path / STABLE_AUDIO_CONFIG
    full = json.loads(config_path.read_text())
    try:
        vae = full["model"]["pretransform"]["config"]
        encoder, decoder = vae["encoder"]["config"], vae["decoder"]["config"]
        sampling_rate = full["sample_rate"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{config_path}: no model.pretransform.config VAE ({exc!r} missing); "
                         "expected stabilityai/stable-audio-open-1.0's model_config.json") from None
    # AutoencoderOobleck is the snake, tanh-free Oobleck that stable-audio-open-1.0 uses.
    if not (encoder.get("use_snake") and decoder.get("use_snake")) or decoder.get("final_tanh", True):
        raise ValueError(f"{config_path}: model.pretransform.config needs use_snake true and decoder final_tanh "
                         "false (stable-audio-open-1.0's VAE)")
    # diffusers' AutoencoderOobleck has one encoder width for both (128 and 128 in the release).
    if encoder["latent_dim"] != encoder["channels"]:
        raise ValueError(f"{config_path}: encoder latent_dim {encoder['latent_dim']} != channels {encoder['channels']}; "
                         "AutoencoderOobleck needs them equal, as stable-audio-open-1.0 has them")
    model = AutoencoderOobleck(
        encoder_hidden_size=encoder["channels"],
        downsampling_ratios=list(encoder["strides"]),
        channel_multiples=list(encoder["c_mults"]),
        decoder_channels=decoder["channels"],
        decoder_input_channels=decoder["latent_dim"],
        audio_channels=vae["io_channels"],
        sampling_rate=sampling_rate,
    )
    blocks = len(encoder["strides"])
    expected = model.state_dict()
    state, unknown = {}, []
    with safe_open(path / STABLE_AUDIO_WEIGHTS, framework="pt") as weights:
        for key in weights.keys():
            if key.startswith(STABLE_AUDIO_VAE_PREFIX):
                name = _stable_audio_key(key[len(STABLE_AUDIO_VAE_PREFIX):], blocks)
                if name not in expected:
                    unknown.append(key)
                    continue
                # SnakeBeta keeps alpha/beta as [C]; diffusers' Snake1d as [1, C, 1].
                state[name] = weights.get_tensor(key).reshape(expected[name].shape)
    missing = sorted(expected.keys() - state.keys())
    if unknown or missing:
        raise ValueError(f"{path / STABLE_AUDIO_WEIGHTS}: the {STABLE_AUDIO_VAE_PREFIX}* tensors do not match "
                         f"{config_path.name}'s VAE (unexpected: {unknown[:3]}, missing: {missing[:3]}); expected "
                         "stabilityai/stable-audio-open-1.0's files")
    model.load_state_dict(state, strict=True, assign=True)
    return model


# The reference's audio-driven encoding (inference/pipeline/video_process.py load_audio_and_encode):
# windows of 29 s at the virtual rate, each starting half a window after the last.
ENCODE_WINDOW_S = 29.0
ENCODE_OVERLAP = 0.5


def merge_overlapping_latents(chunks: list[torch.Tensor], overlap: float = ENCODE_OVERLAP) -> torch.Tensor:
    """Latents [C, n] of consecutive encoder windows merged into one [C, total], as the reference
    merges them: the first window as it is; each later one starts n - int(n * overlap) latents
    after the one before, and over the int(n * overlap) latents they share, fades linearly from
    the earlier (weight (o - i) / o) to the later (i / o)."""
    if len(chunks) == 1:
        return chunks[0]
    n = chunks[0].shape[-1]
    shared = int(n * overlap)
    step = n - shared
    out = torch.zeros(chunks[0].shape[0], (len(chunks) - 1) * step + n, dtype=chunks[0].dtype,
                      device=chunks[0].device)
    out[:, :n] = chunks[0]
    later = torch.arange(shared, dtype=out.dtype, device=out.device) / shared
    for index, chunk in enumerate(chunks[1:], start=1):
        start = index * step
        out[:, start + shared:start + n] = chunk[:, shared:]
        out[:, start:start + shared] = (1 - later) * out[:, start:start + shared] + later * chunk[:, :shared]
    return out


@dataclass(frozen=True)
class TinyOobleckConfig:
    """Narrow Oobleck VAE with the released hop (2 * 4 * 4 * 8 * 8 = 2048) and 64 latent channels."""

    encoder_hidden_size: int = 4
    decoder_channels: int = 4
    channel_multiples: tuple[int, ...] = (1, 2, 2, 2, 2)


class AudioVAE:
    """Decodes [B, N, 64] audio latents (one per video frame) to waveforms at a delivery rate, and
    encodes a supplied recording to them (the audio-driven mode)."""

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
        """Load the VAE of stabilityai/stable-audio-open-1.0 as downloaded: its root (as the
        reference reads it), or its diffusers vae/ folder (given as the root or as the folder)."""
        path = Path(path)
        if (path / STABLE_AUDIO_CONFIG).is_file() and (path / STABLE_AUDIO_WEIGHTS).is_file():
            return cls(load_stable_audio_root(path), device=device, dtype=dtype)
        folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"audio VAE: no {STABLE_AUDIO_CONFIG} + {STABLE_AUDIO_WEIGHTS} and no diffusers vae/config.json at "
                f"{path}; download stabilityai/stable-audio-open-1.0 there"
            )
        vae = AutoencoderOobleck.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
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
            # diffusers ties the encoder's width to its output (128 channels: 64 means, 64 scales, as
            # released); at toy width only the last projection keeps the released output size.
            width = config.encoder_hidden_size * config.channel_multiples[-1]
            vae.encoder.conv2 = torch.nn.utils.weight_norm(
                torch.nn.Conv1d(width, 2 * AUDIO_LATENT_CHANNELS, kernel_size=3, padding=1))
        return cls(vae, device=device, dtype=torch.float32)

    @torch.inference_mode()
    def encode(
        self,
        waveform: torch.Tensor,
        sample_rate: int,
        latents: int | None = None,
        generator: torch.Generator | None = None,
        window_s: float = ENCODE_WINDOW_S,
    ) -> torch.Tensor:
        """A recording [samples, channels] at `sample_rate` -> audio latents [N, 64] (float32, on
        this VAE's device), as the reference's audio-driven mode encodes it: mixed to mono and
        fed to the encoder on every channel, resampled to the 51.2 kHz virtual rate, encoded in
        `window_s` windows that overlap by half (merge_overlapping_latents; a recording up to one
        window long is encoded whole), one latent per 2048 samples (the last one partial).
        `latents` first trims the recording, or pads it with silence, to that many latents'
        worth. The posterior is sampled with `generator` as the reference samples it; without
        one its mean is taken."""
        mono = torch.as_tensor(waveform, dtype=torch.float32)
        mono = mono.mean(dim=1) if mono.ndim == 2 else mono
        mono = resample(mono, sample_rate, AUDIO_VIRTUAL_RATE)
        if latents is not None:
            mono = F.pad(mono, (0, max(0, latents * AUDIO_HOP - mono.shape[0])))[: latents * AUDIO_HOP]
        total = mono.shape[0]
        if total == 0:
            raise ValueError("audio VAE encode: the recording holds no samples")
        window = int(window_s * AUDIO_VIRTUAL_RATE)
        step = int(window * (1 - ENCODE_OVERLAP))
        if total <= window:
            merged = self._encode_window(mono, generator)
        else:
            chunks = []
            for start in range(0, total, step):
                piece = mono[start:start + window]
                chunks.append(self._encode_window(F.pad(piece, (0, window - piece.shape[0])), generator))
                if start + window >= total:
                    break
            merged = merge_overlapping_latents(chunks)
        return merged[:, : math.ceil(total / AUDIO_HOP)].transpose(0, 1).float().contiguous()

    def _encode_window(self, mono: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        x = mono.to(self.device, self.dtype)[None, None].expand(1, self.channels, -1)
        posterior = self.vae.encode(x).latent_dist
        z = posterior.sample(generator) if generator is not None else posterior.mode()
        return z[0].float()  # [64, ceil(samples / 2048)]

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, sample_rate: int = 44100) -> torch.Tensor:
        """[B, N, 64] latents -> float32 waveforms [B, N * sample_rate / 25, channels] on the CPU."""
        z = latents.transpose(1, 2).to(self.device, self.dtype)
        waveform = self.vae.decode(z).sample.float()  # [B, C, N * 2048] at the 51.2 kHz virtual rate
        waveform = resample(waveform, AUDIO_VIRTUAL_RATE, sample_rate)
        return waveform.transpose(1, 2).contiguous().cpu()
