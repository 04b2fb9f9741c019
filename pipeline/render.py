"""The render stage: generate, review and mux in one process (:class:`RenderClips`).

The batch job runs it as an actor pool (pipeline/run.py) and the server as its
Renderer deployment (jobs/serve_app.py); it knows nothing of either.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from model.generator import AVGenerator, GeneratorConfig
from model.magihuman.audio_vae import resample
from pipeline.errors import describe_error
from pipeline.generate import FailedRender, GenerateClips, GeneratedClip, Recording
from pipeline.media import check_ffmpeg, fit_audio, load_audio
from pipeline.mux import ChannelProfile, mux_clip
from pipeline.review import ReviewExpectation, ReviewThresholds, decide_review, measure_clip
from schemas.render import RENDER_REQUEST_ARROW_SCHEMA, RenderRequest


class RenderClips:
    """Actor-pool stage: generate, review and mux in one process, so decoded
    frames never leave the machine that decoded them; only the encoded
    deliverables (MP4, WAV, poster, captions) travel on to archive."""

    def __init__(self, generator_config: GeneratorConfig, thresholds: ReviewThresholds, profile: ChannelProfile,
                 batch_size: int, make_generator: Callable[[GeneratorConfig], Any] = AVGenerator,
                 tokens_per_forward: int | None = None):
        check_ffmpeg()  # once per actor (a Serve replica, a pool actor): its node's ffmpeg, before the model loads
        # make_generator builds the replica (pipeline.run.replica_factory: in process, or a TP group).
        # tokens_per_forward: the budget small shapes pack to (pipeline.generate.shape_batches).
        self.generate = GenerateClips(generator_config, max_batch=batch_size, make_generator=make_generator,
                                      tokens_per_forward=tokens_per_forward)
        self.thresholds = thresholds
        self.profile = profile
        # The actor runs two calls at once: one holds the model while the other
        # reviews and encodes its clips on the CPU.
        self.model_lock = threading.Lock()

    def __call__(self, batch: pa.Table) -> pa.Table:
        requests = [RenderRequest.model_validate(row) for row in batch.to_pylist()]
        # Before the lock: the text encoder (rank 0's, on the CPU or the GPU) encodes this call's
        # prompts while the other call still denoises.
        self.generate.prepare_text(requests)
        with self.model_lock:
            results = self.generate(requests)
        rows = []
        for result in results:
            row = {**result.request.model_dump(include=set(RENDERED_SCHEMA.names)),
                   "request_json": result.request.model_dump_json(),
                   "review_json": None, "assets": None, "timings_s": None, "error": None, "frame_fit": None}
            if isinstance(result, FailedRender):
                row["error"] = result.error
            else:
                try:
                    row.update(self._review_and_mux(result))
                except Exception as exc:  # noqa: BLE001 - a clip that cannot be encoded is one failure row
                    row["error"] = f"review/mux: {describe_error(exc)}"
            rows.append(row)
        return pa.Table.from_pylist(rows, schema=RENDERED_SCHEMA)

    def _review_and_mux(self, clip: GeneratedClip) -> dict:
        timings = dict(clip.timings_s)
        started = time.perf_counter()
        expected = ReviewExpectation.from_request(clip.request)
        # A voice-over clip delivers the recording itself, never the VAE's reconstruction of it.
        audio = clip.audio if clip.recording is None else recording_for_delivery(
            clip.recording, clip.sample_rate, clip.frames.shape[0] / clip.fps)
        signals = measure_clip(clip.frames, audio, clip.sample_rate, clip.fps, expected, self.thresholds)
        timings["review"] = time.perf_counter() - started
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="paddock-mux-") as tmp:
            # audio=False: a silent delivery (no audio track, no stem)
            muxed = mux_clip(clip.frames, audio if clip.request.audio else None, clip.sample_rate, clip.fps,
                             tmp, clip.request.render_id,
                             dialogue=clip.request.dialogue, speech_spans=signals.speech_spans, profile=self.profile)
            # Decided once, on the delivered file: mux normalized its loudness.
            signals = signals.as_delivered(muxed.output_lufs, muxed.output_true_peak_dbtp)
            if clip.recording is not None:
                stem, stem_rate = load_audio(muxed.wav_path)
                signals = signals.with_voiceover_match(
                    stem, recording_for_delivery(clip.recording, stem_rate), stem_rate)
            review = decide_review(signals, expected, self.thresholds)
            assets = {ext: path.read_bytes() for ext, path in
                      (("mp4", muxed.mp4_path), ("wav", muxed.wav_path), ("jpg", muxed.poster_path),
                       ("vtt", muxed.vtt_path)) if path is not None}
        timings["mux"] = time.perf_counter() - started
        return {"review_json": review.model_dump_json(), "assets": list(assets.items()),
                "timings_s": list(timings.items()), "frame_fit": clip.frame_fit}


def recording_for_delivery(recording: Recording, sample_rate: int, seconds: float | None = None) -> np.ndarray:
    """A supplied recording at ``sample_rate`` (the band-limited resampler the audio VAE uses),
    trimmed or padded with silence to ``seconds`` (the clip's whole frames) when given."""
    audio = resample(torch.from_numpy(np.ascontiguousarray(recording.audio.T)), recording.sample_rate,
                     sample_rate).T.numpy()
    return audio if seconds is None else fit_audio(audio, round(seconds * sample_rate))


RENDERED_SCHEMA = pa.schema([
    *(RENDER_REQUEST_ARROW_SCHEMA.field(name) for name in
      ("render_id", "campaign_id", "brief_id", "locale", "aspect_ratio", "model_id", "seed", "variant_id", "take")),
    ("request_json", pa.string()),
    ("review_json", pa.string()),
    ("assets", pa.map_(pa.string(), pa.binary())),
    ("timings_s", pa.map_(pa.string(), pa.float64())),
    ("error", pa.string()),
    ("frame_fit", pa.string()),
])
