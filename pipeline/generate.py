"""generate: render requests in, decoded clips (or failure records) out.

One instance owns one model replica. Requests are grouped by shape
(:func:`shape_batches`, the pipeline's one grouping: the campaign job cuts its
blocks with it too) so the replica can batch them; small shapes (256p drafts)
pack more clips into one forward, up to a token budget (:func:`token_budget`).

Retries, one layer per kind of fault:

- a request the model cannot render (a reference image that cannot be read,
  an out-of-memory at a large size): here. A batch that raises is retried one
  request at a time, so the bad request becomes one failure row and the rest
  of the batch goes on.
- a rank of a tensor-parallel replica that dies or hangs: model/replica.py
  rebuilds the group and retries the call (``ReplicaConfig.max_retries``); when
  that runs out it raises ``ReplicaError``, which is not retried here again.
- the render actor's own process dying: Ray Data restarts the actor and runs
  the block again (actor pools' defaults); user errors never reach Ray, since
  every failure becomes a row.
- S3 throttling and 5xx: botocore, inside the S3 DAM
  (pipeline/dam/s3.py); an OpenLineage endpoint: its HTTP transport
  (pipeline/lineage.py). A failed render is not retried within a run: the
  next run (or a repost to the server) makes it, since only finished renders
  are skipped.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import groupby

import numpy as np

from model.generator import AVGenerator, ClipSpec, GeneratorConfig
from model.presets import get_preset
from model.replica import ReplicaError
from pipeline.console import quiet_dependencies
from pipeline.errors import describe_error
from pipeline.media import load_audio, read_uri_bytes
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
    frame_fit: str = "exact"  # how the decoded frames met the requested duration (ClipOutput.frame_fit)
    recording: "Recording | None" = None  # the voice-over that drove the clip: the audio to deliver


@dataclass(frozen=True)
class Recording:
    """A supplied voice-over as decoded: float32 [samples, channels] at its own rate."""

    audio: np.ndarray
    sample_rate: int


def load_recording(request: RenderRequest, s3_endpoint: str | None = None) -> Recording | None:
    """The request's voice-over, read and checked against the digest ingest planned it with (a
    file replaced since then would drive a clip whose id says otherwise)."""
    voiceover = request.voiceover
    if voiceover is None:
        return None
    data = read_uri_bytes(voiceover.uri, s3_endpoint, "voiceovers.uri")
    digest = hashlib.sha256(data).hexdigest()
    if digest != voiceover.sha256:
        raise ValueError(f"voiceovers.uri: {voiceover.uri} changed since the plan (sha256 {digest[:12]}..., planned "
                         f"{voiceover.sha256[:12]}...); plan the campaign again")
    audio, rate = load_audio(data)
    return Recording(audio, rate)


@dataclass
class FailedRender:
    request: RenderRequest
    error: str


def shape_key(request: RenderRequest) -> tuple:
    """Requests with equal keys make latents of equal shape and can share a batch."""
    return (request.resolution, request.aspect_ratio, request.num_frames, request.reference_image_uri is not None,
            request.voiceover is not None)


# Clips per forward at most, however few tokens they have: a batch's decoded frames stay in host
# memory until its review and mux finish (a 5 s 256p clip is ~43 MB of uint8 frames), and a batch
# is one Ray Data block, the unit a dead actor's retry makes again.
MAX_PACKED_CLIPS = 16


def clip_tokens(request: RenderRequest) -> int:
    """The DiT tokens of the request's largest pass, at its model preset's generation sizes."""
    return get_preset(request.model_id).geometry(request.clip_seconds, request.aspect_ratio,
                                                 request.resolution).dit_tokens


def token_budget(requests: Sequence[RenderRequest], max_batch: int, tokens_per_forward: int | None = None) -> int:
    """Tokens one forward may hold: ``tokens_per_forward`` when set, else ``max_batch`` clips of the
    largest shape among ``requests``, so that packing small clips never makes a forward (and its
    activations, which grow with its tokens) larger than the one the largest batch makes anyway."""
    if tokens_per_forward is not None:
        return tokens_per_forward
    return max_batch * max((clip_tokens(r) for r in requests), default=0)


def shape_batches(requests: Sequence[RenderRequest], max_batch: int,
                  tokens_per_forward: int | None = None) -> list[list[RenderRequest]]:
    """The requests grouped by shape (input order kept within a shape), each group cut into
    batches of ``max_batch``; with a ``tokens_per_forward`` budget, a shape small enough packs
    more, as many as fit the budget (at most MAX_PACKED_CLIPS). The budget never cuts a batch
    below ``max_batch``: whether that fits is model/memory.py's check."""
    batches = []
    for _, group in groupby(sorted(requests, key=shape_key), key=shape_key):
        group = list(group)
        size = max_batch
        if tokens_per_forward is not None:
            size = max(max_batch, min(MAX_PACKED_CLIPS, tokens_per_forward // clip_tokens(group[0])))
        batches.extend(group[start:start + size] for start in range(0, len(group), size))
    return batches


def clip_spec(request: RenderRequest, recording: Recording | None = None) -> ClipSpec:
    return ClipSpec(
        prompt=request.prompt,
        duration_s=request.clip_seconds,
        aspect_ratio=request.aspect_ratio,
        resolution=request.resolution,
        seed=request.seed,
        reference_image=request.reference_image_uri,
        negative_prompt=request.negative_prompt,
        audio=recording.audio if recording is not None else None,
        audio_rate=recording.sample_rate if recording is not None else 0,
    )


class GenerateClips:
    """Callable over a list of requests; holds the replica for its lifetime."""

    def __init__(self, config: GeneratorConfig, max_batch: int = 4,
                 make_generator: Callable[[GeneratorConfig], AVGenerator] = AVGenerator,
                 tokens_per_forward: int | None = None):
        self.generator = make_generator(config)
        self.max_batch = max_batch
        self.tokens_per_forward = tokens_per_forward  # shape_batches' packing budget; None: max_batch only
        self.config = config

    def prepare_text(self, requests: Sequence[RenderRequest]) -> None:
        """Encode the prompts of a coming call while the replica may still be busy with another
        (RenderClips calls it before taking the model); a replica without it encodes in the call."""
        prepare = getattr(self.generator, "prepare_text", None)
        if prepare is None:
            return
        try:
            prepare([clip_spec(r) for r in requests])
        except Exception as exc:  # noqa: BLE001 - the call itself meets the fault and makes it a failure row
            logger.warning("text prefetch of %d requests failed: %s", len(requests), describe_error(exc))

    def __call__(self, requests: Sequence[RenderRequest]) -> list[GeneratedClip | FailedRender]:
        results: dict[str, GeneratedClip | FailedRender] = {}
        for chunk in shape_batches(requests, self.max_batch, self.tokens_per_forward):
            for result in self._generate_chunk(chunk):
                results[result.request.render_id] = result
        return [results[r.render_id] for r in requests]

    def _generate_chunk(self, chunk: list[RenderRequest]) -> list[GeneratedClip | FailedRender]:
        try:
            return self._generate(chunk)
        except ReplicaError as exc:  # the replica already retried on fresh groups: its layer, not this one
            logger.warning("replica failed on a batch of %d: %s", len(chunk), describe_error(exc))
            return [FailedRender(request, describe_error(exc)) for request in chunk]
        except Exception as exc:  # noqa: BLE001 - a failed batch is retried request by request
            if len(chunk) == 1:
                logger.warning("render %s failed: %s", chunk[0].render_id, describe_error(exc))
                return [FailedRender(chunk[0], describe_error(exc))]
            logger.warning("batch of %d failed (%s); retrying one by one", len(chunk), describe_error(exc))
            return [result for request in chunk for result in self._generate_chunk([request])]

    def _generate(self, chunk: list[RenderRequest]) -> list[GeneratedClip]:
        started = time.perf_counter()
        recordings = [load_recording(r, self.config.s3_endpoint) if r.voiceover else None for r in chunk]
        outputs = self.generator.generate([clip_spec(r, rec) for r, rec in zip(chunk, recordings)])
        wall_s = time.perf_counter() - started
        return [
            GeneratedClip(
                request=request,
                frames=output.frames,
                audio=output.audio,
                sample_rate=output.sample_rate,
                fps=output.fps,
                timings_s={**output.timings, "generate_wall_per_clip": wall_s / len(chunk)},
                frame_fit=output.frame_fit,
                recording=recording,
            )
            for request, output, recording in zip(chunk, outputs, recordings)
        ]
