"""What a re-run does with a render the DAM already holds: skip it, re-tag it, re-deliver it, or make it again.

The completion record is the truth (pipeline/archive.py). :func:`decide_for_record` compares its
delivery fingerprint with this run's: another model, sampler, decoder or reference image
means the render is made again; another channel profile alone means it is re-delivered
(:class:`RedeliverClips`: its archived frames and 24-bit stem are mixed and encoded again,
no model); otherwise it is skipped, and its review is decided again from the recorded
measures with this run's forbidden terms and thresholds (:func:`retag`: cheap, no render).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import numpy as np
import pyarrow as pa

from pipeline.archive import REVIEW_STATUS_TAG, REVIEWED_BY_TAG, CompletionRecord, find_archived
from pipeline.dam import DAM
from pipeline.dam.keys import completion_key
from pipeline.errors import describe_error
from pipeline.fingerprint import DeliveryFingerprint
from pipeline.media import load_audio
from pipeline.mux import ChannelProfile, mux_clip
from pipeline.review import (ReviewExpectation, ReviewResult, ReviewSignals, ReviewThresholds, decide_review,
                             find_forbidden_terms)
from pipeline.render import RENDERED_SCHEMA
from schemas.render import RenderRequest

RerunAction = Literal["render", "redeliver", "skip"]


@dataclass(frozen=True)
class ArchivedRender:
    action: RerunAction
    record: CompletionRecord | None = None


def decide_for_record(record: CompletionRecord | None, fingerprint: DeliveryFingerprint) -> ArchivedRender:
    """What this run does with a render archived with ``record`` (None: not archived completely)."""
    if record is None:
        return ArchivedRender("render")
    made = record.fingerprint
    if made is None:  # archived before fingerprints were recorded: what it was made with is unknown, so kept
        return ArchivedRender("skip", record)
    if fingerprint.needs_render(made):
        return ArchivedRender("render", record)
    if fingerprint.profile != made.profile:
        return ArchivedRender("redeliver", record)
    return ArchivedRender("skip", record)


def review_digest(forbidden_terms: list[str], thresholds: ReviewThresholds) -> str:
    """What a render's review depends on besides its render_id (which covers the dialogue and
    the clip's shape): the forbidden terms and the thresholds. The DAM's manifest keeps it, so a
    re-run re-tags (:func:`retag`, which reads the record) only the renders where it changed."""
    text = json.dumps([list(forbidden_terms), thresholds.model_dump(mode="json")], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recorded_signals(review: ReviewResult) -> ReviewSignals:
    return ReviewSignals(**review.model_dump(include=set(ReviewSignals.model_fields)))


def review_again(signals: ReviewSignals, request: RenderRequest, thresholds: ReviewThresholds) -> ReviewResult:
    """The review decided again from measured signals, with the request's forbidden terms as they are now."""
    found = find_forbidden_terms([line.line for line in request.dialogue], request.forbidden_terms)
    return decide_review(signals.model_copy(update={"forbidden_terms_found": found}),
                         ReviewExpectation.from_request(request), thresholds)


def retag(dam: DAM, record: CompletionRecord, request: RenderRequest,
          thresholds: ReviewThresholds) -> CompletionRecord:
    """The record with its review decided again; when the decision changed, the record and
    every object's review_status tag are rewritten (the files are not touched)."""
    if record.review is None:
        return record
    review = review_again(recorded_signals(record.review), request, thresholds)
    if (review.review_status, review.review_reasons) == (record.review.review_status, record.review.review_reasons):
        return record
    updated = record.model_copy(update={"review": review, "review_status": review.review_status})
    tags = {REVIEW_STATUS_TAG: review.review_status, "model": record.model_id, "seed": str(record.seed)}
    for obj in record.objects.values():
        current = dam.get_tags(obj.key) or {}
        # A person's decision (tagged with who made it) stays: only the automatic status follows the re-check.
        kept = {REVIEW_STATUS_TAG: current[REVIEW_STATUS_TAG]} if REVIEWED_BY_TAG in current else {}
        dam.put_tags(obj.key, {**current, **tags, **kept})
    prefix = record.objects[next(iter(record.objects))].key.rsplit("/", 1)[0]
    dam.put_bytes(completion_key(prefix, record.render_id),
                  json.dumps(updated.model_dump(mode="json"), indent=2, sort_keys=True).encode(), tags=tags)
    return updated


def decode_frames(path: Path) -> tuple[np.ndarray, float]:
    """An MP4's video as uint8 [T, H, W, 3] RGB, and its frame rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return np.stack(frames), float(stream.average_rate)


class RedeliverClips:
    """Batch stage: requests whose archived render only needs another channel profile in, the
    same rows RenderClips gives out (``assets`` re-encoded, review decided on the new file).

    The archived MP4's frames are decoded and encoded again (one more H.264 generation) and
    the audio is normalized again from the archived 24-bit WAV stem; no model is loaded.
    """

    def __init__(self, dam: DAM, thresholds: ReviewThresholds, profile: ChannelProfile):
        self.dam = dam
        self.thresholds = thresholds
        self.profile = profile

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for fields in batch.to_pylist():
            request = RenderRequest.model_validate(fields)
            row = {**request.model_dump(include=set(RENDERED_SCHEMA.names)), "request_json": request.model_dump_json(),
                   "review_json": None, "assets": None, "timings_s": None, "error": None}
            try:
                row.update(self._redeliver(request))
            except Exception as exc:  # noqa: BLE001 - one clip that cannot be re-delivered is one failure row
                row["error"] = f"re-deliver: {describe_error(exc)}"
            rows.append(row)
        return pa.Table.from_pylist(rows, schema=RENDERED_SCHEMA)

    def _redeliver(self, request: RenderRequest) -> dict:
        record = find_archived(self.dam, request)
        if record is None or record.review is None:
            raise FileNotFoundError(f"{request.render_id}: no complete archived render with a review to re-deliver")
        with tempfile.TemporaryDirectory(prefix="paddock-redeliver-") as tmp:
            frames, fps = decode_frames(self._fetch(record, "mp4", Path(tmp)))
            audio, rate = load_audio(self._fetch(record, "wav", Path(tmp))) if "wav" in record.objects else (None, 0)
            signals = recorded_signals(record.review)
            # a silent delivery (no stem) has no rate; mux_clip ignores it with audio=None
            muxed = mux_clip(frames, audio, rate or 48000, fps, Path(tmp) / "out", request.render_id,
                             dialogue=request.dialogue, speech_spans=signals.speech_spans, profile=self.profile)
            review = review_again(signals.as_delivered(muxed.output_lufs, muxed.output_true_peak_dbtp),
                                  request, self.thresholds)
            files = {"mp4": muxed.mp4_path, "wav": muxed.wav_path, "jpg": muxed.poster_path, "vtt": muxed.vtt_path}
            assets = [(ext, path.read_bytes()) for ext, path in files.items() if path is not None]
        return {"review_json": review.model_dump_json(), "assets": assets, "timings_s": []}

    def _fetch(self, record: CompletionRecord, ext: str, folder: Path) -> Path:
        path = folder / f"archived.{ext}"
        data = self.dam.get_bytes(record.objects[ext].key)
        if data is None:
            raise FileNotFoundError(f"{record.objects[ext].key} is gone from {self.dam.uri}")
        path.write_bytes(data)
        return path
