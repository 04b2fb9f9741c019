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

import pyarrow as pa

from model.generator import AVGenerator, GeneratorConfig
from pipeline.errors import describe_error
from pipeline.generate import FailedRender, GenerateClips, GeneratedClip
from pipeline.media import check_ffmpeg
from pipeline.mux import ChannelProfile, mux_clip
from pipeline.review import ReviewExpectation, ReviewThresholds, decide_review, measure_clip
from schemas.render import RENDER_REQUEST_ARROW_SCHEMA, RenderRequest


class RenderClips:
    """Actor-pool stage: generate, review and mux in one process, so decoded
    frames never leave the machine that decoded them; only the encoded
    deliverables (MP4, WAV, poster, captions) travel on to archive."""

    def __init__(self, generator_config: GeneratorConfig, thresholds: ReviewThresholds, profile: ChannelProfile,
                 batch_size: int, make_generator: Callable[[GeneratorConfig], Any] = AVGenerator):
        check_ffmpeg()  # once per actor (a Serve replica, a pool actor): its node's ffmpeg, before the model loads
        # make_generator builds the replica (pipeline.run.replica_factory: in process, or a TP group).
        self.generate = GenerateClips(generator_config, max_batch=batch_size, make_generator=make_generator)
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
                   "review_json": None, "assets": None, "timings_s": None, "error": None}
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
        signals = measure_clip(clip.frames, clip.audio, clip.sample_rate, clip.fps, expected, self.thresholds)
        timings["review"] = time.perf_counter() - started
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="paddock-mux-") as tmp:
            muxed = mux_clip(clip.frames, clip.audio, clip.sample_rate, clip.fps, tmp, clip.request.render_id,
                             dialogue=clip.request.dialogue, speech_spans=signals.speech_spans, profile=self.profile)
            # Decided once, on the delivered file: mux normalized its loudness.
            review = decide_review(signals.as_delivered(muxed.output_lufs, muxed.output_true_peak_dbtp),
                                   expected, self.thresholds)
            assets = {ext: path.read_bytes() for ext, path in
                      (("mp4", muxed.mp4_path), ("wav", muxed.wav_path), ("jpg", muxed.poster_path),
                       ("vtt", muxed.vtt_path))}
        timings["mux"] = time.perf_counter() - started
        return {"review_json": review.model_dump_json(), "assets": list(assets.items()), "timings_s": list(timings.items())}


RENDERED_SCHEMA = pa.schema([
    *(RENDER_REQUEST_ARROW_SCHEMA.field(name) for name in
      ("render_id", "campaign_id", "brief_id", "locale", "aspect_ratio", "model_id", "seed")),
    ("review_json", pa.string()),
    ("assets", pa.map_(pa.string(), pa.binary())),
    ("timings_s", pa.map_(pa.string(), pa.float64())),
    ("error", pa.string()),
])
