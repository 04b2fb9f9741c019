"""Wan2.2 video VAE (48 latent channels, stride 4x16x16) through diffusers' AutoencoderKLWan.

Latents the DiT sees are normalized per channel with the VAE config's `latents_mean` /
`latents_std`: z = (mu - mean) / std. Encoding is used for image-to-video (the reference image
becomes the first latent frame); decoding returns uint8 frames.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from PIL import Image

from .sizes import VAE_STRIDE, VIDEO_LATENT_CHANNELS


@dataclass(frozen=True)
class TinyWanVAEConfig:
    """Narrow Wan2.2-style VAE: same stride (4x16x16 with a 2x2 patchify), same 48 latent channels."""

    base_dim: int = 8
    num_res_blocks: int = 1
    dim_mult: tuple[int, ...] = (1, 1, 1, 1)


def _tiny_autoencoder(tiny: TinyWanVAEConfig, seed: int) -> AutoencoderKLWan:
    # Non-trivial normalization constants so the tiny stack exercises the same (de)normalization.
    mean = torch.linspace(-0.5, 0.5, VIDEO_LATENT_CHANNELS)
    std = torch.linspace(0.5, 2.0, VIDEO_LATENT_CHANNELS)
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
            latents_mean=mean.tolist(),
            latents_std=std.tolist(),
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
        """Load the diffusers-format VAE folder (Wan-AI/Wan2.2-TI2V-5B-Diffusers, subfolder vae/)."""
        path = Path(path)
        if not (path / "config.json").is_file():
            hint = ""
            if (path / "Wan2.2_VAE.pth").is_file():
                hint = "; Wan2.2_VAE.pth there is the original-format file, the -Diffusers repository has the same weights"
            raise FileNotFoundError(
                f"video VAE: expected a diffusers AutoencoderKLWan folder with config.json at {path} "
                f"(the vae/ folder of Wan-AI/Wan2.2-TI2V-5B-Diffusers){hint}"
            )
        vae = AutoencoderKLWan.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
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
        video = self.vae.decode(self.denormalize(latents).to(self.dtype)).sample  # [B,3,T,H,W] in [-1,1]
        video = ((video.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
        return video.permute(0, 2, 3, 4, 1).cpu()
