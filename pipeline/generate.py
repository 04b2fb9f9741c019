"""generate: render requests in, decoded clips (or failure records) out.

One instance owns one model replica. Requests are grouped by shape
(resolution, aspect ratio, duration) so the replica can batch them; a group
that fails is retried one request at a time, so one bad request (a reference
image that cannot be read, an out-of-memory at a large size) becomes one
failure row and the rest of the batch goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import groupby

import numpy as np

from model.generator import AVGenerator, ClipSpec, GeneratorConfig
from pipeline.console import quiet_dependencies
from schemas.render import RenderRequest

logger = logging.getLogger(__name__)
quiet_dependencies()  # in the render workers too: the model build's deprecation warnings


@dataclass
class GeneratedClip:
    request: RenderRequest
    frames: np.ndarray  # uint8 [T, H, W, 3]
    audio: np.ndarray  # float32 [samples, channels]
    sample_rate: int
    fps: float
    timings_s: dict[str, float] = field(default_factory=dict)


@dataclass
class FailedRender:
    request: RenderRequest
    error: str


def shape_key(request: RenderRequest) -> tuple:
    """Requests with equal keys make latents of equal shape and can share a batch."""
    return (request.resolution, request.aspect_ratio, request.duration_s, request.reference_image_uri is not None)


def clip_spec(request: RenderRequest) -> ClipSpec:
    return ClipSpec(
        prompt=request.prompt,
        duration_s=request.duration_s,
        aspect_ratio=request.aspect_ratio,
        resolution=request.resolution,
        seed=request.seed,
        reference_image=request.reference_image_uri,
    )


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a failure row."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "out of memory" in text.lower() or isinstance(exc, MemoryError):
        return f"out of memory: {text or type(exc).__name__}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class GenerateClips:
    """Callable over a list of requests; holds the replica for its lifetime."""

    def __init__(self, config: GeneratorConfig, max_batch: int = 4,
                 make_generator: Callable[[GeneratorConfig], AVGenerator] = AVGenerator):
        self.generator = make_generator(config)
        self.max_batch = max_batch

    def __call__(self, requests: Sequence[RenderRequest]) -> list[GeneratedClip | FailedRender]:
        results: dict[str, GeneratedClip | FailedRender] = {}
        for _, group in groupby(sorted(requests, key=shape_key), key=shape_key):
            group = list(group)
            for start in range(0, len(group), self.max_batch):
                chunk = group[start:start + self.max_batch]
                for result in self._generate_chunk(chunk):
                    results[result.request.render_id] = result
        return [results[r.render_id] for r in requests]

    def _generate_chunk(self, chunk: list[RenderRequest]) -> list[GeneratedClip | FailedRender]:
        try:
            return self._generate(chunk)
        except Exception as exc:  # noqa: BLE001 - a failed batch is retried request by request
            if len(chunk) == 1:
                logger.warning("render %s failed: %s", chunk[0].render_id, describe_error(exc))
                return [FailedRender(chunk[0], describe_error(exc))]
            logger.warning("batch of %d failed (%s); retrying one by one", len(chunk), describe_error(exc))
            return [result for request in chunk for result in self._generate_chunk([request])]

    def _generate(self, chunk: list[RenderRequest]) -> list[GeneratedClip]:
        started = time.perf_counter()
        outputs = self.generator.generate([clip_spec(r) for r in chunk])
        wall_s = time.perf_counter() - started
        return [
            GeneratedClip(
                request=request,
                frames=output.frames,
                audio=output.audio,
                sample_rate=output.sample_rate,
                fps=output.fps,
                timings_s={**output.timings, "generate_wall_per_clip": wall_s / len(chunk)},
            )
            for request, output in zip(chunk, outputs)
        ]
