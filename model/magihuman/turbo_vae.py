"""TurboVAED: the distilled Wan2.2 video decoder the reference decodes every clip with.

A decoder-only student of the Wan2.2 VAE (same 48-channel latent space, same 4x16x16 stride)
released as `turbo_vae/` next to the DiTs: a diffusers-style JSON config
(`TurboV3-Wan22-TinyShallow_7_7.json`) and a pickled `.ckpt` whose weights sit under
`ema_state_dict`, keys possibly prefixed `module.` (saved from a DDP wrapper).

Architecture (reference `inference/model/turbo_vaed/`): conv_in, a mid block of 3D resnets, up
blocks (optional channel-changing resnet, optional x2 upsampler in space, and in time unless
`spatio_only`, then resnets), RMSNorm + SiLU, conv_out to 3 * 2 * 2 channels and a 2x2 unpatchify.
Convolutions pad time by replicating the edge frames, norms have no weights. A clip is decoded by
a temporal sliding window: windows of `step_size` latent frames (the first one `first_chunk_size`)
with one latent frame of context on each side whose pixels are dropped, so memory is bounded by
one window whatever the clip's length.

Latents arrive normalized as the DiT sees them, z = (mu - mean) / std with the Wan2.2 VAE's
per-channel statistics (the reference hardcodes them in the decoder; the released config does
not carry them), and leave as uint8 frames, as `VideoVAE.decode` returns them.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .sizes import VAE_STRIDE, VIDEO_LATENT_CHANNELS

log = logging.getLogger(__name__)

# Wan2.2 VAE latent statistics (its config's latents_mean / latents_std), used by the reference.
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip

# Keys of the released JSON that describe the (absent) encoder or training: ignored without a warning.
_IGNORED_CONFIG_KEYS = frozenset({"_class_name", "_diffusers_version", "in_channels", "scaling_factor", "patch_size_t"})


@dataclass(frozen=True)
class TurboVAEDConfig:
    """The released JSON's fields (reference names). Per-block tuples are in encoder order, as in
    the JSON; the decoder walks them reversed. Defaults are the released TinyShallow_7_7 decoder."""

    latent_channels: int = VIDEO_LATENT_CHANNELS
    out_channels: int = 3
    decoder_block_out_channels: tuple[int, ...] = (64, 128, 256, 512)
    decoder_layers_per_block: tuple[int, ...] = (2, 2, 2, 3, 3)  # one more than blocks: the mid block
    decoder_spatio_temporal_scaling: tuple[bool, ...] = (False, True, True, True)
    decoder_spatio_only: tuple[bool, ...] = (False, True, False, False)
    decoder_is_dw_conv: tuple[bool, ...] = (False, False, False, False, False)
    decoder_dw_kernel_size: int = 3
    decoder_causal: bool = False
    patch_size: int = 2
    use_unpatchify: bool = True
    resnet_norm_eps: float = 1e-6
    first_chunk_size: int = 7
    step_size: int = 7
    spatial_compression_ratio: int = VAE_STRIDE[1]
    temporal_compression_ratio: int = VAE_STRIDE[0]
    latents_mean: tuple[float, ...] = WAN22_LATENTS_MEAN  # not in the released JSON
    latents_std: tuple[float, ...] = WAN22_LATENTS_STD

    def __post_init__(self) -> None:
        blocks = len(self.decoder_block_out_channels)
        problems = []
        if len(self.decoder_layers_per_block) != blocks + 1 or len(self.decoder_is_dw_conv) != blocks + 1:
            problems.append(f"decoder_layers_per_block and decoder_is_dw_conv need {blocks + 1} entries (mid block + blocks)")
        if len(self.decoder_spatio_temporal_scaling) != blocks or len(self.decoder_spatio_only) != blocks:
            problems.append(f"decoder_spatio_temporal_scaling and decoder_spatio_only need {blocks} entries")
        if self.decoder_causal:
            problems.append("decoder_causal=true: the reference decoder is non-causal only")
        if self.patch_size != 2:
            problems.append(f"patch_size={self.patch_size}: the reference decoder supports 2 only")
        if self.first_chunk_size < 1 or self.step_size < 1:
            problems.append("first_chunk_size and step_size must be >= 1")
        if len(self.latents_mean) != self.latent_channels or len(self.latents_std) != self.latent_channels:
            problems.append(f"latents_mean and latents_std need {self.latent_channels} entries (latent_channels)")
        temporal = sum(s and not o for s, o in zip(self.decoder_spatio_temporal_scaling, self.decoder_spatio_only))
        spatial = sum(self.decoder_spatio_temporal_scaling) + 1  # + the final unpatchify or pixel shuffle
        if (2**temporal, 2**spatial) != (self.temporal_compression_ratio, self.spatial_compression_ratio):
            problems.append(
                f"the blocks upsample {2**temporal}x in time and {2**spatial}x in space, the config says "
                f"{self.temporal_compression_ratio}x and {self.spatial_compression_ratio}x"
            )
        if problems:
            raise ValueError(f"TurboVAED config: {'; '.join(problems)}")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> TurboVAEDConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except ValueError as err:
            raise ValueError(f"{path}: not a JSON TurboVAED config ({err})") from err
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known - _IGNORED_CONFIG_KEYS)
        if unknown:  # the reference builds the model with diffusers' from_config, which ignores them too
            log.warning("%s: ignoring TurboVAED config fields %s (known: %s)", path, unknown, sorted(known))
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in known}
        try:
            return cls(**values)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err

    def replace(self, **changes: Any) -> TurboVAEDConfig:
        return replace(self, **changes)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def channel_rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS over the channel dim (1) in fp32, no weight, back in x's dtype."""
    return (x * torch.rsqrt(x.float().pow(2).mean(1, keepdim=True) + eps)).to(x.dtype)


def pad_time_replicate(x: torch.Tensor, kernel_t: int) -> torch.Tensor:
    """Repeat the first and last frames (k - 1) // 2 times each: the convolutions' temporal padding."""
    pad = (kernel_t - 1) // 2
    if pad == 0:
        return x
    return torch.cat([x[:, :, :1].expand(-1, -1, pad, -1, -1), x, x[:, :, -1:].expand(-1, -1, pad, -1, -1)], dim=2)


class TimePaddedConv3d(nn.Module):
    """Conv3d zero-padded in space, edge-replicated in time."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int]):
        super().__init__()
        k = kernel_size if isinstance(kernel_size, tuple) else (kernel_size,) * 3
        self.kernel_t = k[0]
        self.conv = nn.Conv3d(in_channels, out_channels, k, padding=(0, k[1] // 2, k[2] // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(pad_time_replicate(x, self.kernel_t))


class TimePaddedSeparableConv3d(nn.Module):
    """Depthwise k x k x k then pointwise 1 x 1 x 1 (the config's `decoder_is_dw_conv` blocks)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.kernel_t = kernel_size
        pad = kernel_size // 2
        self.depthwise_conv = nn.Conv3d(in_channels, in_channels, kernel_size, padding=(0, pad, pad), groups=in_channels)
        self.pointwise_conv = nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(pad_time_replicate(x, self.kernel_t)))


class ResnetBlock(nn.Module):
    """norm -> act -> conv -> norm -> SiLU -> conv, plus a (norm -> 1x1x1 conv) shortcut when the
    width changes. After an upsampler the first activation is ReLU (`after_upsampler`)."""

    def __init__(self, in_channels: int, out_channels: int, eps: float, separable: bool, dw_kernel: int, after_upsampler: bool = False):
        super().__init__()

        def conv(cin: int, cout: int, k: int) -> nn.Module:
            return TimePaddedSeparableConv3d(cin, cout, k) if separable else TimePaddedConv3d(cin, cout, k)

        k = dw_kernel if separable else 3
        self.first_act = F.relu if after_upsampler else F.silu
        self.conv1 = conv(in_channels, out_channels, k)
        self.conv2 = conv(out_channels, out_channels, k)
        self.shortcut_eps = eps
        self.conv_shortcut = conv(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.first_act(channel_rms_norm(x, 1e-8)))
        h = self.conv2(F.silu(channel_rms_norm(h, 1e-8)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(channel_rms_norm(x, self.shortcut_eps))
        return h + x


class Upsampler(nn.Module):
    """x2 in space (nearest, then a 3x3 conv per frame); with `temporal`, first x2 in time by a
    (3,1,1) conv to twice the channels whose halves become frames 2t and 2t + 1. The clip's very
    first latent frame yields one frame, not two (`is_first_chunk` drops the extra one)."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        # `resample.1` is the reference's parameter name (index 0 is the parameter-free upsample).
        self.resample = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest-exact"), nn.Conv2d(channels, channels, 3, padding=1))
        self.time_conv = TimePaddedConv3d(channels, channels * 2, (3, 1, 1)) if temporal else None

    def forward(self, x: torch.Tensor, is_first_chunk: bool) -> torch.Tensor:
        b, c, t, h, w = x.shape
        if self.time_conv is not None:
            x = self.time_conv(x).view(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
            if is_first_chunk:
                x = x[:, :, 1:]
            t = x.shape[2]
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        frames = self.resample[1](self.resample[0](frames.float()).to(x.dtype))  # upsample in fp32, as the reference
        return frames.view(b, t, c, 2 * h, 2 * w).transpose(1, 2)


class MidBlock(nn.Module):
    def __init__(self, channels: int, num_layers: int, eps: float, separable: bool, dw_kernel: int):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(channels, channels, eps, separable, dw_kernel) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x


class UpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, eps: float, separable: bool, dw_kernel: int, scale: bool, spatio_only: bool):
        super().__init__()
        self.conv_in = ResnetBlock(in_channels, out_channels, eps, separable, dw_kernel) if in_channels != out_channels else None
        self.upsamplers = nn.ModuleList([Upsampler(out_channels, temporal=not spatio_only)]) if scale else None
        self.resnets = nn.ModuleList(
            ResnetBlock(out_channels, out_channels, eps, separable, dw_kernel, after_upsampler=scale) for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor, is_first_chunk: bool) -> torch.Tensor:
        if self.conv_in is not None:
            x = self.conv_in(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, is_first_chunk)
        for resnet in self.resnets:
            x = resnet(x)
        return x


class PixelShuffleUpsampler(nn.Module):
    """3x3 conv then a 2x2 pixel shuffle (channels / 4): the head used when `use_unpatchify` is false."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = F.pixel_shuffle(self.conv(x.transpose(1, 2).reshape(b * t, c, h, w)), 2)
        return frames.view(b, t, c // 4, 2 * h, 2 * w).transpose(1, 2)


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C * p * p, T, H, W] -> [B, C, T, H * p, W * p]; channels ordered (c, pw, ph) as the reference."""
    b, cpp, t, h, w = x.shape
    x = x.view(b, cpp // (p * p), p, p, t, h, w)  # (c, pw, ph)
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, cpp // (p * p), t, h * p, w * p)


class Decoder(nn.Module):
    """One window of latent frames -> pixels in [-1, 1] (roughly)."""

    def __init__(self, cfg: TurboVAEDConfig):
        super().__init__()
        widths = cfg.decoder_block_out_channels[::-1]
        layers = cfg.decoder_layers_per_block[::-1]
        separable = cfg.decoder_is_dw_conv[::-1]
        scaling, spatio_only = cfg.decoder_spatio_temporal_scaling[::-1], cfg.decoder_spatio_only[::-1]
        eps, dw = cfg.resnet_norm_eps, cfg.decoder_dw_kernel_size
        self.use_unpatchify, self.patch_size = cfg.use_unpatchify, cfg.patch_size
        self.conv_in = TimePaddedConv3d(cfg.latent_channels, widths[0], 3)
        self.mid_block = MidBlock(widths[0], layers[0], eps, separable[0], dw)
        self.up_blocks = nn.ModuleList(
            UpBlock(cin, cout, layers[i + 1], eps, separable[i + 1], dw, scaling[i], spatio_only[i])
            for i, (cin, cout) in enumerate(zip((widths[0], *widths[:-1]), widths))
        )
        width = widths[-1]
        if not cfg.use_unpatchify:
            self.upsampler2d_1 = PixelShuffleUpsampler(width)
            width //= 4
        out = cfg.out_channels * cfg.patch_size**2 if cfg.use_unpatchify else cfg.out_channels
        self.conv_out = TimePaddedConv3d(width, out, 3)

    def forward(self, z: torch.Tensor, is_first_chunk: bool) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x, is_first_chunk)
        if not self.use_unpatchify:
            x = self.upsampler2d_1(F.silu(channel_rms_norm(x, 1e-8)))
        x = self.conv_out(F.silu(channel_rms_norm(x, 1e-8)))
        return unpatchify(x, self.patch_size) if self.use_unpatchify else x


# --------------------------------------------------------------------------------------------
# The decoder with its sliding window
# --------------------------------------------------------------------------------------------


def window_plan(num_frames: int, first_chunk_size: int, step_size: int) -> tuple[int, list[tuple[int, int]]]:
    """(padding frames, windows) for a clip of `num_frames` latent frames, as the reference chunks it.
    The clip is padded (last frame repeated) to first_chunk_size + n * step_size; each window is a
    (start, stop) slice of the padded clip that includes one frame of context on each side, except
    before the first window and after the last."""
    if num_frames <= first_chunk_size:
        return first_chunk_size - num_frames, [(0, first_chunk_size)]
    padding = -(num_frames - first_chunk_size) % step_size
    total = num_frames + padding
    windows = [(0, first_chunk_size + 1)]
    for start in range(first_chunk_size, total, step_size):
        windows.append((start - 1, min(start + step_size + 1, total)))
    return padding, windows


class TurboVAED(nn.Module):
    """Normalized latents [B, 48, T, h, w] -> uint8 frames [B, 4(T-1)+1, 16h, 16w, 3] on the CPU."""

    def __init__(self, config: TurboVAEDConfig = TurboVAEDConfig()):
        super().__init__()
        self.config = config
        self.decoder = Decoder(config)
        # Plain fp32 tensors, not buffers: a cast of the decoder to bf16 must not round them.
        shape = (1, config.latent_channels, 1, 1, 1)
        self.latents_mean = torch.tensor(config.latents_mean, dtype=torch.float32, device="cpu").view(shape)
        self.latents_std = torch.tensor(config.latents_std, dtype=torch.float32, device="cpu").view(shape)

    @classmethod
    def tiny(cls, config: TurboVAEDConfig, device: str | torch.device = "cpu", seed: int = 0) -> TurboVAED:
        """Random weights (PyTorch's default init, seeded) in fp32."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(config)
        return model.to(device).eval().requires_grad_(False)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16
    ) -> TurboVAED:
        """Load a released `turbo_vae/` folder: one JSON config and one `.ckpt`."""
        path = Path(path)
        configs, checkpoints = sorted(path.glob("*.json")), sorted(path.glob("*.ckpt"))
        if len(configs) != 1 or len(checkpoints) != 1:
            raise FileNotFoundError(
                f"TurboVAED folder {path} must hold exactly one .json config and one .ckpt "
                f"(GAIR/daVinci-MagiHuman turbo_vae/), found {[p.name for p in configs + checkpoints]}"
            )
        with torch.device("meta"):
            model = cls(TurboVAEDConfig.from_json(configs[0]))
        model.load_checkpoint(checkpoints[0])
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)

    def load_checkpoint(self, ckpt: Path) -> None:
        """Weights from the reference's checkpoint: `ema_state_dict`, `module.` stripped, keys with
        or without the `decoder.` prefix. Decoder weights must match exactly; other keys are ignored."""
        payload = torch.load(ckpt, map_location="cpu", weights_only=True)  # never unpickle code
        if not isinstance(payload, dict) or "ema_state_dict" not in payload:
            raise ValueError(f"{ckpt}: expected a dict with 'ema_state_dict' (the TurboVAED release layout)")
        state = {k.removeprefix("module."): v for k, v in payload["ema_state_dict"].items()}
        if not any(k.startswith("decoder.") for k in state):
            state = {f"decoder.{k}": v for k, v in state.items()}
        state = {k: v for k, v in state.items() if k.startswith("decoder.")}
        expected = set(self.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"{ckpt}: weights do not fit the config next to it: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
        try:
            self.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as err:
            raise ValueError(f"{ckpt}: weight shapes do not fit the config next to it: {err}") from err

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.conv_out.conv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.decoder.conv_out.conv.weight.device

    def _prepared(self, sample: torch.Tensor) -> tuple[torch.Tensor, int, list[tuple[int, int]]]:
        """Normalized [1, C, T, h, w] -> (padded latent in the decoder's dtype and device, padding, windows)."""
        cfg = self.config
        z = sample.to(self.device).float() * self.latents_std.to(self.device) + self.latents_mean.to(self.device)
        z = z.to(self.dtype)
        padding, windows = window_plan(z.shape[2], cfg.first_chunk_size, cfg.step_size)
        if padding:
            z = torch.cat([z, z[:, :, -1:].expand(-1, -1, padding, -1, -1)], dim=2)
        return z, padding, windows

    def _window_pixels(self, z: torch.Tensor, windows: list[tuple[int, int]], i: int, padding: int) -> torch.Tensor:
        """Window i's own pixels [1, 3, t, H, W]: its context frames dropped, and after the last
        window the padding frames too."""
        context = self.config.temporal_compression_ratio  # pixels of one latent frame of context
        start, stop = windows[i]
        out = self.decoder(z[:, :, start:stop], is_first_chunk=i == 0)
        left = 0 if i == 0 else context
        right = out.shape[2] - (0 if i == len(windows) - 1 else context)
        if i == len(windows) - 1:
            right -= padding * self.config.temporal_compression_ratio
        return out[:, :, left:right]

    @torch.inference_mode()
    def decode_pixels(self, z: torch.Tensor) -> torch.Tensor:
        """One sample's normalized latent [1, C, T, h, w] -> pixels [1, 3, 4(T-1)+1, 16h, 16w] in the
        decoder's dtype, on its device, window by window."""
        z, padding, windows = self._prepared(z)
        return torch.cat([self._window_pixels(z, windows, i, padding) for i in range(len(windows))], dim=2)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalized latents [B, 48, T, h, w] -> uint8 frames [B, 4(T-1)+1, 16h, 16w, 3] on the CPU,
        one sample at a time (bounded memory, and a sample's pixels do not depend on its batch)."""
        return torch.cat([pixels_to_frames(self.decode_pixels(sample)) for sample in latents.split(1)])

    def work_items(self, latents: torch.Tensor) -> list[tuple[int, int]]:
        """(sample, window) pairs, each decoded from its own latent slice alone (parallel.split_decode)."""
        _, windows = window_plan(latents.shape[2], self.config.first_chunk_size, self.config.step_size)
        return [(b, i) for b in range(latents.shape[0]) for i in range(len(windows))]

    @torch.inference_mode()
    def decode_items(self, latents: torch.Tensor, items: list[tuple[int, int]]) -> list[torch.Tensor]:
        """uint8 frames [1, t, H, W, 3] (CPU) of each (sample, window) item."""
        prepared: dict[int, tuple] = {}  # one sample's latent at a time
        pieces = []
        for b, i in items:
            prepared = prepared if b in prepared else {b: self._prepared(latents[b : b + 1])}
            z, padding, windows = prepared[b]
            pieces.append(pixels_to_frames(self._window_pixels(z, windows, i, padding)))
        return pieces

    def assemble(self, latents: torch.Tensor, pieces: dict[tuple[int, int], torch.Tensor]) -> torch.Tensor:
        """The pieces in (sample, window) order: what `decode(latents)` returns."""
        frames = torch.cat([piece for _, piece in sorted(pieces.items())], dim=1)
        return frames.view(latents.shape[0], -1, *frames.shape[2:])


def pixels_to_frames(video: torch.Tensor) -> torch.Tensor:
    """Pixels [B, 3, T, H, W] in [-1, 1] -> uint8 frames [B, T, H, W, 3] on the CPU (both decoders)."""
    return ((video.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1).cpu()
