"""Wan2.2 video VAE (48 latent channels, stride 4x16x16) through diffusers' AutoencoderKLWan.

It loads from the folder as users download it: Wan-AI/Wan2.2-TI2V-5B holds the original
`Wan2.2_VAE.pth` (the Wan repository's module names, no config), whose keys are renamed to
diffusers' on load (the renaming diffusers' scripts/convert_wan_to_diffusers.py does for Wan2.2);
the -Diffusers repository's `vae/` folder loads as it is.

Latents the DiT sees are normalized per channel with the VAE config's `latents_mean` /
`latents_std`: z = (mu - mean) / std. Encoding is used for image-to-video (the reference image
becomes the first latent frame); decoding returns uint8 frames.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from PIL import Image

from .sizes import VAE_STRIDE, VIDEO_LATENT_CHANNELS
from .turbo_vae import pixels_to_frames


@dataclass(frozen=True)
class TinyWanVAEConfig:
    """Narrow Wan2.2-style VAE: same stride (4x16x16 with a 2x2 patchify), same 48 latent channels."""

    base_dim: int = 8
    num_res_blocks: int = 1
    dim_mult: tuple[int, ...] = (1, 1, 1, 1)


# Latent statistics of the tiny stack, non-trivial so it exercises the same (de)normalization;
# the tiny TurboVAED shares them, as the released one shares Wan2.2's.
TINY_LATENTS_MEAN = tuple(torch.linspace(-0.5, 0.5, VIDEO_LATENT_CHANNELS).tolist())
TINY_LATENTS_STD = tuple(torch.linspace(0.5, 2.0, VIDEO_LATENT_CHANNELS).tolist())

WAN_ORIGINAL_FILE = "Wan2.2_VAE.pth"
# Per-channel latent statistics of the released Wan2.2 VAE: the .pth does not carry them (the Wan
# and MagiHuman code hard-code them; diffusers' config of the converted VAE lists the same values).
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)

# Original Wan module names -> diffusers', applied in order to each key.
_WAN_RESBLOCK = (("residual.0.gamma", "norm1.gamma"), ("residual.2.", "conv1."), ("residual.3.gamma", "norm2.gamma"),
                 ("residual.6.", "conv2."), ("shortcut.", "conv_shortcut."))
_WAN_KEY_RULES = (
    (re.compile(r"^conv1\."), "quant_conv."),
    (re.compile(r"^conv2\."), "post_quant_conv."),
    (re.compile(r"^(encoder|decoder)\.conv1\."), r"\1.conv_in."),
    (re.compile(r"^(encoder|decoder)\.head\.0\."), r"\1.norm_out."),
    (re.compile(r"^(encoder|decoder)\.head\.2\."), r"\1.conv_out."),
    (re.compile(r"^(encoder|decoder)\.middle\.0\."), r"\1.mid_block.resnets.0."),
    (re.compile(r"^(encoder|decoder)\.middle\.1\."), r"\1.mid_block.attentions.0."),
    (re.compile(r"^(encoder|decoder)\.middle\.2\."), r"\1.mid_block.resnets.1."),
    # Down/up blocks: a Sequential of residual blocks, then the resampler.
    (re.compile(r"^encoder\.downsamples\.(\d+)\.downsamples\.\d+\.(resample|time_conv)"), r"encoder.down_blocks.\1.downsampler.\2"),
    (re.compile(r"^encoder\.downsamples\.(\d+)\.downsamples\.(\d+)\."), r"encoder.down_blocks.\1.resnets.\2."),
    (re.compile(r"^decoder\.upsamples\.(\d+)\.upsamples\.\d+\.(resample|time_conv)"), r"decoder.up_blocks.\1.upsampler.\2"),
    (re.compile(r"^decoder\.upsamples\.(\d+)\.upsamples\.(\d+)\."), r"decoder.up_blocks.\1.resnets.\2."),
)


def wan_original_to_diffusers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Wan2.2 VAE state dict from the Wan repository's module names to AutoencoderKLWan's."""
    converted = {}
    for key, value in state_dict.items():
        new = key
        for pattern, replacement in _WAN_KEY_RULES:
            new = pattern.sub(replacement, new)
        if ".resnets." in new or ".mid_block.resnets." in new:
            for old, repl in _WAN_RESBLOCK:
                new = new.replace(old, repl)
        converted[new] = value
    return converted


def wan_config_from_original(state_dict: dict[str, torch.Tensor]) -> dict:
    """AutoencoderKLWan's config for an original Wan2.2-layout state dict, read from its tensors
    (the .pth has no config): widths, block counts and which stages downsample in time."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise ValueError(f"{WAN_ORIGINAL_FILE}: no {key!r}; not a Wan2.2 VAE state dict")
        return tuple(state_dict[key].shape)

    base_dim = shape("encoder.conv1.weight")[0]
    stages = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"encoder\.downsamples\.(\d+)\.", k))})
    num_res_blocks = len({int(m.group(1)) for k in state_dict
                          if (m := re.match(r"encoder\.downsamples\.0\.downsamples\.(\d+)\.residual\.", k))})
    dim_mult = [shape(f"encoder.downsamples.{i}.downsamples.0.residual.6.weight")[0] // base_dim for i in stages]
    temporal = [f"encoder.downsamples.{i}.downsamples.{num_res_blocks}.time_conv.weight" in state_dict
                for i in stages[:-1]]
    z_dim = shape("conv2.weight")[0]
    return dict(
        base_dim=base_dim,
        decoder_base_dim=shape("decoder.conv1.weight")[0] // dim_mult[-1],
        z_dim=z_dim,
        dim_mult=dim_mult,
        num_res_blocks=num_res_blocks,
        temperal_downsample=temporal,
        is_residual=True,
        in_channels=shape("encoder.conv1.weight")[1],
        out_channels=shape("decoder.head.2.weight")[0],
        patch_size=2,
        scale_factor_temporal=2 ** sum(temporal),
        scale_factor_spatial=2 * 2 ** len(temporal),
        latents_mean=list(WAN22_LATENTS_MEAN),
        latents_std=list(WAN22_LATENTS_STD),
    )


def load_wan_original(path: Path) -> AutoencoderKLWan:
    """An AutoencoderKLWan (in the file's dtype) from the original Wan2.2_VAE.pth, a pickled state
    dict read with weights_only=True: tensors only, no code."""
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a state dict of tensors that torch.load(weights_only=True) reads ({reason}); "
                         "download Wan2.2_VAE.pth from Wan-AI/Wan2.2-TI2V-5B again") from None
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(state_dict).__name__}")
    config = wan_config_from_original(state_dict)
    if config["z_dim"] != VIDEO_LATENT_CHANNELS:
        raise ValueError(f"{path}: a VAE with {config['z_dim']} latent channels; MagiHuman needs the Wan2.2 "
                         f"{VIDEO_LATENT_CHANNELS}-channel VAE (Wan-AI/Wan2.2-TI2V-5B)")
    vae = AutoencoderKLWan(**config)
    vae.load_state_dict(wan_original_to_diffusers(state_dict), strict=True, assign=True)
    return vae


def _tiny_autoencoder(tiny: TinyWanVAEConfig, seed: int) -> AutoencoderKLWan:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKLWan(
            base_dim=tiny.base_dim,
            decoder_base_dim=tiny.base_dim,
            z_dim=VIDEO_LATENT_CHANNELS,
            dim_mult=list(tiny.dim_mult),
            num_res_blocks=tiny.num_res_blocks,
            temperal_downsample=[False, True, True],
            is_residual=True,
            in_channels=12,
            out_channels=12,
            patch_size=2,
            scale_factor_temporal=VAE_STRIDE[0],
            scale_factor_spatial=VAE_STRIDE[1],
            latents_mean=list(TINY_LATENTS_MEAN),
            latents_std=list(TINY_LATENTS_STD),
        )


def fit_frames(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """uint8 [T,H,W,3] -> uint8 [T,height,width,3] on the CPU: center-crop to the target aspect
    ratio, then resize (bilinear, antialiased when shrinking). Runs on uint8 channels-last data,
    torch's fast CPU path, so 1080p output needs no float copy of the clip."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"fit_frames expects uint8 [T,H,W,3] frames, got {frames.dtype} {tuple(frames.shape)}")
    frames = frames.cpu()
    _, src_h, src_w, _ = frames.shape
    if (src_w, src_h) == (width, height):
        return frames
    if src_h * width > src_w * height:  # source is taller than the target aspect: crop rows
        crop_w, crop_h = src_w, round(src_w * height / width)
    else:
        crop_w, crop_h = round(src_h * width / height), src_h
    top, left = (src_h - crop_h) // 2, (src_w - crop_w) // 2
    cropped = frames[:, top : top + crop_h, left : left + crop_w].permute(0, 3, 1, 2)  # channels-last NCHW view
    resized = F.interpolate(cropped, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return resized.permute(0, 2, 3, 1).contiguous()


def reference_crop_box(width: int, height: int, target_width: int, target_height: int) -> tuple[float, ...]:
    """The centered crop of a `width` x `height` image to the target's aspect ratio, computed as the
    reference does (inference/pipeline/video_process.py, resizecrop): the kept side whole, the other
    truncated to an integer, the box in half pixels (PIL rounds it when cropping)."""
    if height / width > target_height / target_width:
        new_w = width
        new_h = int(new_w * target_height / target_width)
    else:
        new_h = height
        new_w = int(new_h * target_width / target_height)
    return ((width - new_w) / 2, (height - new_h) / 2, (width + new_w) / 2, (height + new_h) / 2)


def reference_pixels(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """An RGB image -> [1, 3, 1, height, width] float32 in [-1, 1], as the reference prepares the
    first frame: center crop to the aspect, Lanczos resize (diffusers' VideoProcessor default), then
    x / 255 * 2 - 1."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (width, height):
        image = image.crop(reference_crop_box(*image.size, width, height))
        image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)  # [H, W, 3]
    return (pixels * 2.0 - 1.0).permute(2, 0, 1)[None, :, None]


def fit_frame_count(frames: torch.Tensor, count: int) -> torch.Tensor:
    """[T, ...] frames -> [count, ...]: extra frames dropped from the end, or the last frame held
    for the missing ones. The reference's latent layout decodes to within 2 frames of the request."""
    if frames.shape[0] >= count:
        return frames[:count]
    held = frames[-1:].expand(count - frames.shape[0], *frames.shape[1:])
    return torch.cat([frames, held])


class VideoVAE:
    """Encode reference images to normalized latents; decode normalized latents to uint8 frames."""

    def __init__(
        self,
        vae: AutoencoderKLWan,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        tile_above_pixels: int = 1280 * 720,
    ):
        if vae.config.z_dim != VIDEO_LATENT_CHANNELS:
            raise ValueError(
                f"video VAE has z_dim={vae.config.z_dim}; the MagiHuman DiT needs the Wan2.2 "
                f"{VIDEO_LATENT_CHANNELS}-channel VAE"
            )
        if vae.dtype != dtype:  # from_pretrained already loaded the right dtype
            vae = vae.to(dtype=dtype)
        self.vae = vae.to(device).eval().requires_grad_(False)
        # One sample at a time: bounds memory and keeps a sample's pixels independent of its batch.
        self.vae.enable_slicing()
        self.device = torch.device(device)
        self.dtype = dtype
        self.tile_above_pixels = tile_above_pixels
        shape = (1, VIDEO_LATENT_CHANNELS, 1, 1, 1)
        self.latents_mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=device).view(shape)
        self.latents_std = torch.tensor(vae.config.latents_std, dtype=torch.float32, device=device).view(shape)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16
    ) -> VideoVAE:
        """Load the VAE from a folder as downloaded: Wan-AI/Wan2.2-TI2V-5B (its Wan2.2_VAE.pth), or
        Wan-AI/Wan2.2-TI2V-5B-Diffusers (its vae/ folder, or that folder itself)."""
        path = Path(path)
        if (path / WAN_ORIGINAL_FILE).is_file():
            vae = load_wan_original(path / WAN_ORIGINAL_FILE)
        else:
            folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(
                    f"video VAE: no {WAN_ORIGINAL_FILE} (Wan-AI/Wan2.2-TI2V-5B) and no diffusers config.json "
                    f"(the vae/ folder of Wan-AI/Wan2.2-TI2V-5B-Diffusers) at {path}; download one of them there"
                )
            vae = AutoencoderKLWan.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
        return cls(vae, device=device, dtype=dtype)

    @classmethod
    def tiny(
        cls, config: TinyWanVAEConfig = TinyWanVAEConfig(), device: str | torch.device = "cpu", seed: int = 0
    ) -> VideoVAE:
        return cls(_tiny_autoencoder(config, seed), device=device, dtype=torch.float32)

    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        return (mu.float() - self.latents_mean) / self.latents_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z.float() * self.latents_std + self.latents_mean

    @torch.inference_mode()
    def encode_image(self, image: Image.Image, width: int, height: int) -> torch.Tensor:
        """An RGB image (EXIF orientation already applied) -> normalized latent
        [1, 48, 1, height/16, width/16] (float32), prepared as the reference does (reference_pixels)."""
        x = reference_pixels(image, width, height).to(self.device, self.dtype)
        self.vae.disable_tiling()
        mu = self.vae.encode(x).latent_dist.mode()
        return self.normalize(mu)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalized latents [B, 48, T, h, w] -> uint8 frames [B, 4(T-1)+1, 16h, 16w, 3] on the CPU."""
        height, width = latents.shape[-2] * VAE_STRIDE[1], latents.shape[-1] * VAE_STRIDE[2]
        # Spatial tiling bounds activation memory at 1080p; small sizes decode in one piece.
        if height * width > self.tile_above_pixels:
            self.vae.enable_tiling()
        else:
            self.vae.disable_tiling()
        return pixels_to_frames(self.vae.decode(self.denormalize(latents).to(self.dtype)).sample)

    # The decode as independent work items (model/parallel.py split_decode runs them on all ranks):
    # at sizes `decode` tiles, diffusers' own spatial tiles (blended on assembly as diffusers blends
    # them, so the result is the one-rank decode); below, whole samples.

    def _tiling(self, latents: torch.Tensor) -> tuple[int, int, int, int] | None:
        """(tile rows, tile cols, row stride, col stride) in latent pixels when `decode` tiles, else None."""
        vae, ratio = self.vae, self.vae.spatial_compression_ratio
        h, w = latents.shape[-2:]
        rows, cols = vae.tile_sample_min_height // ratio, vae.tile_sample_min_width // ratio
        if h * w * ratio * ratio <= self.tile_above_pixels or (h <= rows and w <= cols):
            return None
        return rows, cols, vae.tile_sample_stride_height // ratio, vae.tile_sample_stride_width // ratio

    def work_items(self, latents: torch.Tensor) -> list[tuple[int, int, int]]:
        """(sample, tile row start, tile col start); (sample, -1, -1) decodes the whole sample."""
        tiling = self._tiling(latents)
        if tiling is None:
            return [(b, -1, -1) for b in range(latents.shape[0])]
        h, w = latents.shape[-2:]
        return [(b, i, j) for b in range(latents.shape[0]) for i in range(0, h, tiling[2]) for j in range(0, w, tiling[3])]

    @torch.inference_mode()
    def decode_items(self, latents: torch.Tensor, items: list[tuple[int, int, int]]) -> list[torch.Tensor]:
        """Per item: a whole sample's uint8 frames, or a tile's raw decoder output (CPU), as diffusers' tiled_decode makes it."""
        vae, tiling, pieces = self.vae, self._tiling(latents), []
        for b, i, j in items:
            z = self.denormalize(latents[b : b + 1].to(self.device)).to(self.dtype)
            if tiling is None:
                vae.disable_tiling()
                pieces.append(pixels_to_frames(vae.decode(z).sample))
                continue
            vae.clear_cache()
            frames = []
            for k in range(z.shape[2]):
                vae._conv_idx = [0]
                tile = vae.post_quant_conv(z[:, :, k : k + 1, i : i + tiling[0], j : j + tiling[1]])
                frames.append(vae.decoder(tile, feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=k == 0))
            vae.clear_cache()
            pieces.append(torch.cat(frames, dim=2).cpu())
        return pieces

    def assemble(self, latents: torch.Tensor, pieces: dict[tuple[int, int, int], torch.Tensor]) -> torch.Tensor:
        """What `decode(latents)` returns, from every item's piece (tiles blended as diffusers blends them)."""
        tiling = self._tiling(latents)
        if tiling is None:
            return torch.cat([pieces[(b, -1, -1)] for b in range(latents.shape[0])])
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        vae, patch = self.vae, self.vae.config.patch_size or 1
        h, w = latents.shape[-2:]
        out_h, out_w = h * vae.spatial_compression_ratio // patch, w * vae.spatial_compression_ratio // patch
        stride_h, stride_w = vae.tile_sample_stride_height // patch, vae.tile_sample_stride_width // patch
        blend_h, blend_w = vae.tile_sample_min_height // patch - stride_h, vae.tile_sample_min_width // patch - stride_w
        clips = []
        for b in range(latents.shape[0]):
            rows = [[pieces[(b, i, j)].to(self.device) for j in range(0, w, tiling[3])] for i in range(0, h, tiling[2])]
            result_rows = []
            for i, row in enumerate(rows):
                result_row = []
                for j, tile in enumerate(row):
                    if i > 0:
                        tile = vae.blend_v(rows[i - 1][j], tile, blend_h)
                    if j > 0:
                        tile = vae.blend_h(row[j - 1], tile, blend_w)
                    result_row.append(tile[:, :, :, :stride_h, :stride_w])
                result_rows.append(torch.cat(result_row, dim=-1))
            video = torch.cat(result_rows, dim=3)[:, :, :, :out_h, :out_w]
            video = unpatchify(video, patch_size=patch) if vae.config.patch_size is not None else video
            clips.append(pixels_to_frames(video.clamp(-1.0, 1.0)))
        return torch.cat(clips)

