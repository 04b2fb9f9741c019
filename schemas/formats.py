"""The clip formats paddock delivers: one definition for the brief schema, the
render request and the model's size tables (model/magihuman/sizes.py reads them here)."""

from __future__ import annotations

from fractions import Fraction
from typing import Literal, get_args

FPS = 25
AspectRatio = Literal["16:9", "9:16", "1:1", "4:3", "3:4", "21:9", "9:21", "4:5", "5:4"]
Resolution = Literal["256p", "540p", "720p", "1080p"]
ASPECT_RATIOS: tuple[str, ...] = get_args(AspectRatio)
RESOLUTIONS: tuple[str, ...] = get_args(Resolution)
DRAFT_RESOLUTION = "256p"  # delivered at the base generation size, no super-resolution pass
SR_RESOLUTIONS: tuple[str, ...] = tuple(r for r in RESOLUTIONS if r != DRAFT_RESOLUTION)

# (width, height) each DiT pass generates at, per aspect ratio; every side a multiple of 32
# (VAE stride 16 x patch 2). The rules behind the numbers, each pinned by tests/unit/test_sizes.py:
# - "base": the base DiT keeps the released model's 448x256 pixel budget (the reference's 256p);
# - "540p": twice the base latent grid, as the reference's 540p super-resolution does;
# - "720p", "1080p": the delivery size rounded up to 32, except 21:9 and 9:21, whose wide
#   delivery would exceed the 16:9 grid's pixels by a third: those stay at that budget and the
#   frames are scaled up to the delivery size, as 540p's are.
# The first three rows are the sizes paddock has always used; keep them, or clips change.
GENERATION_SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "16:9": {"base": (448, 256), "540p": (896, 512), "720p": (1280, 736), "1080p": (1920, 1088)},
    "9:16": {"base": (256, 448), "540p": (512, 896), "720p": (736, 1280), "1080p": (1088, 1920)},
    "1:1": {"base": (352, 352), "540p": (704, 704), "720p": (736, 736), "1080p": (1088, 1088)},
    "4:3": {"base": (384, 288), "540p": (768, 576), "720p": (960, 736), "1080p": (1440, 1088)},
    "3:4": {"base": (288, 384), "540p": (576, 768), "720p": (736, 960), "1080p": (1088, 1440)},
    "21:9": {"base": (512, 224), "540p": (1024, 448), "720p": (1504, 640), "1080p": (2240, 960)},
    "9:21": {"base": (224, 512), "540p": (448, 1024), "720p": (640, 1504), "1080p": (960, 2240)},
    "4:5": {"base": (288, 352), "540p": (576, 704), "720p": (736, 928), "1080p": (1088, 1376)},
    "5:4": {"base": (352, 288), "540p": (704, 576), "720p": (928, 736), "1080p": (1376, 1088)},
}


def aspect_fraction(aspect_ratio: str) -> Fraction:
    """width / height of an aspect ratio such as "4:5"."""
    width, height = aspect_ratio.split(":")
    return Fraction(int(width), int(height))


def delivery_size(resolution: str, aspect_ratio: str) -> tuple[int, int]:
    """(width, height) of the delivered frames. A draft (256p) is the base generation size; otherwise
    the short side is the resolution's number and the long side the short side times the ratio,
    rounded to the nearest even number (720p 4:5 is 720x900, 1080p 21:9 is 2520x1080)."""
    if aspect_ratio not in GENERATION_SIZES:
        raise ValueError(f"aspect_ratio={aspect_ratio!r} is not supported; use one of {', '.join(ASPECT_RATIOS)}")
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution={resolution!r} is not supported; use one of {', '.join(RESOLUTIONS)}")
    if resolution == DRAFT_RESOLUTION:
        return GENERATION_SIZES[aspect_ratio]["base"]
    short = int(resolution.removesuffix("p"))
    ratio = aspect_fraction(aspect_ratio)
    wide = ratio if ratio >= 1 else 1 / ratio
    long = 2 * int(short * wide / 2 + Fraction(1, 2))  # half-way rounds up: 540p 4:5 is 540x676
    return (long, short) if ratio >= 1 else (short, long)
