"""The clip formats paddock delivers: one definition for the brief schema, the
render request and the model's size tables."""

from __future__ import annotations

from typing import Literal

FPS = 25
AspectRatio = Literal["16:9", "9:16", "1:1"]
Resolution = Literal["256p", "540p", "1080p"]
ASPECT_RATIOS: tuple[str, ...] = ("16:9", "9:16", "1:1")
RESOLUTIONS: tuple[str, ...] = ("256p", "540p", "1080p")
