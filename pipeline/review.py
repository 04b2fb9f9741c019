"""review: tag every generated clip from its signal and decide its review status.

Two steps, kept apart: :func:`measure_clip` measures (:class:`ReviewSignals`,
no judgement), and :func:`decide_review` decides the status and its reasons
(:class:`ReviewResult`) once, from the measures of the delivered clip: the
render stage measures, muxes, swaps in the loudness mux measured on its output
(:meth:`ReviewSignals.as_delivered`), then decides.

Measures (all in numpy, on the arrays the generate stage hands over):
- duration, fps and resolution against what was requested;
- black frames and frozen frames, as a share of the clip;
- silence and clipping, as a share of the audio; the non-silent spans
  (`speech_spans`, which mux spreads the captions over);
- integrated loudness per ITU-R BS.1770-4 / EBU R128 (LUFS), sample peak and
  true peak (4x oversampled), from :mod:`pipeline.loudness`;
- the audio-video offset: the audio's energy-change envelope cross-correlated
  with the frame-difference motion envelope. Sign: positive means the audio
  lags the video (a beep 200 ms after its flash reads +200 ms);
- dialogue content: forbidden terms, matched case- and accent-insensitively.

- a voice-over clip: that the delivered audio is the supplied recording (its
  duration, and its correlation with the recording at the delivered rate).

Status: `rejected` for hard faults (wrong duration, fps or size; a silent clip
that should carry dialogue; a forbidden term; delivered audio that is not the
supplied voice-over), `needs_review` for soft ones
(offset beyond the limit with confidence, loudness far off target, long black
or frozen stretches, clipping), else `auto_approved`. Every threshold lives in
`ReviewThresholds`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.av_sync import estimate_av_offset
from pipeline.loudness import as_channels, integrated_loudness, true_peak_dbtp
from schemas.brief import DialogueLine
from schemas.render import FPS, RenderRequest

ReviewStatus = Literal["auto_approved", "needs_review", "rejected"]


class ReviewThresholds(BaseModel):
    """Every threshold the review uses. Levels are shares of full scale unless the name says dB."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # hard faults
    duration_tolerance_s: float = Field(0.1, description="allowed |measured - requested| duration")
    fps_tolerance: float = 0.01
    silent_clip_share: float = Field(0.95, description="silence share at or above which a clip counts as silent")

    # video measures (on luma in [0, 1])
    black_pixel_luma: float = Field(0.10, description="pixel luma at or below this is black (ffmpeg blackdetect's default)")
    black_frame_pixel_share: float = Field(0.98, description="share of black pixels that makes a frame black")
    frozen_pixel_change: float = Field(0.02, description="|luma change| to the previous frame above which a pixel moved")
    frozen_moved_share: float = Field(0.005, description="share of moved pixels below which a frame is still")
    min_stretch_s: float = Field(0.2, description="black or frozen runs shorter than this do not count")
    analysis_width: int = Field(160, description="frames are subsampled to about this width for the video measures")

    # audio measures
    silence_dbfs: float = Field(-50.0, description="RMS level below which a window is silent")
    silence_window_s: float = 0.02
    min_speech_s: float = Field(0.1, description="non-silent spans shorter than this are dropped")
    speech_gap_s: float = Field(0.3, description="silent gaps shorter than this join the spans around them")
    clip_level: float = Field(0.999, description="|sample| at or above this counts as clipped")

    # audio-video offset
    av_max_lag_ms: float = 500.0
    av_hop_ms: float = 5.0

    # soft faults
    loudness_target_lufs: float = -14.0
    loudness_tolerance_lu: float = Field(10.0, description="integrated loudness further than this from target needs review")
    max_black_share: float = 0.25
    max_frozen_share: float = 0.5
    max_clipping_share: float = 0.001
    max_av_offset_ms: float = 80.0
    min_av_offset_confidence: float = 0.3

    # voice-over clips: the delivered audio against the supplied recording
    min_voiceover_correlation: float = Field(0.95, description="correlation below which the delivered audio is not "
                                             "the recording")


class ReviewExpectation(BaseModel):
    """What the clip was asked to be: the request fields the review checks against."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    duration_s: float
    width: int
    height: int
    fps: float = FPS
    dialogue: list[DialogueLine] = Field(default_factory=list)
    forbidden_terms: list[str] = Field(default_factory=list)
    audio: bool = Field(True, description="False: a silent delivery, whose audio is not judged")
    voiceover: bool = Field(False, description="the delivered audio must be a supplied recording")

    @property
    def has_dialogue(self) -> bool:
        return len(self.dialogue) > 0

    @classmethod
    def from_request(cls, request: RenderRequest) -> ReviewExpectation:
        return cls(
            duration_s=request.clip_seconds,
            width=request.width,
            height=request.height,
            dialogue=request.dialogue,
            forbidden_terms=request.forbidden_terms,
            audio=request.audio,
            voiceover=request.voiceover is not None,
        )


class ReviewSignals(BaseModel):
    """What the review measured on a clip; no judgement in it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    duration_s: float = Field(description="video duration: frames / fps")
    audio_duration_s: float
    fps: float
    width: int
    height: int
    black_frame_share: float
    frozen_frame_share: float
    silence_share: float
    clipping_share: float
    integrated_lufs: float | None = Field(description="None when no 400 ms block passes the -70 LUFS gate")
    sample_peak_dbfs: float | None
    true_peak_dbtp: float | None
    av_offset_ms: float | None = Field(description="positive: audio lags video; None when either envelope is flat")
    av_offset_confidence: float
    speech_spans: list[tuple[float, float]] = Field(description="(start_s, end_s) of non-silent audio")
    forbidden_terms_found: list[str]
    voiceover_duration_s: float | None = Field(None, description="the delivered audio's duration (voice-over clips)")
    voiceover_correlation: float | None = Field(None, description="delivered audio vs the supplied recording")

    def with_voiceover_match(self, delivered: np.ndarray, recording: np.ndarray, sample_rate: int) -> ReviewSignals:
        """These measures with how the delivered audio matches the supplied recording (both
        [samples, channels] at ``sample_rate``): the delivered duration, and the correlation of the
        two, mixed to mono, over their common length (level-independent, so loudness
        normalization keeps it at 1)."""
        a, b = (as_channels(np.asarray(x, dtype=np.float64)).mean(axis=1) for x in (delivered, recording))
        n = min(a.size, b.size)
        a, b = a[:n] - a[:n].mean(), b[:n] - b[:n].mean()
        norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
        return self.model_copy(update={"voiceover_duration_s": delivered.shape[0] / sample_rate,
                                       "voiceover_correlation": float((a * b).sum() / norm) if norm > 0 else 0.0})

    def as_delivered(self, integrated_lufs: float | None, true_peak_dbtp: float | None) -> ReviewSignals:
        """These measures with the loudness of the delivered file: mux normalizes loudness,
        so what counts is what it measured on its output, not the model's raw audio."""
        return self.model_copy(update={"integrated_lufs": integrated_lufs, "true_peak_dbtp": true_peak_dbtp})


class ReviewResult(ReviewSignals):
    """The measures and the decision made from them (:func:`decide_review`)."""

    review_status: ReviewStatus
    review_reasons: list[str]
    quality_score: float = Field(0.0, description="0..1 from the signal measures (quality_score); picks the best take")


# --------------------------------------------------------------------------- audio measures


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of the True runs in a boolean vector."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _keep_long_runs(mask: np.ndarray, min_length: int) -> np.ndarray:
    kept = np.zeros_like(mask, dtype=bool)
    for start, end in _runs(mask):
        if end - start >= min_length:
            kept[start:end] = True
    return kept


def silence_and_speech(
    audio: np.ndarray, sample_rate: int, thresholds: ReviewThresholds
) -> tuple[float, list[tuple[float, float]]]:
    """Silence share (of fixed windows) and the non-silent spans in seconds."""
    audio = as_channels(audio).astype(np.float64)
    window = max(1, round(thresholds.silence_window_s * sample_rate))
    n_windows = audio.shape[0] // window
    if n_windows == 0:
        return 1.0, []
    mean_square = (audio[: n_windows * window] ** 2).reshape(n_windows, window, -1).mean(axis=(1, 2))
    with np.errstate(divide="ignore"):
        level_db = 10.0 * np.log10(mean_square)
    sounding = level_db >= thresholds.silence_dbfs
    silence_share = float(1.0 - sounding.mean())

    window_s = window / sample_rate
    spans: list[list[float]] = []
    for start, end in _runs(sounding):
        start_s, end_s = start * window_s, end * window_s
        if spans and start_s - spans[-1][1] < thresholds.speech_gap_s:
            spans[-1][1] = end_s
        else:
            spans.append([start_s, end_s])
    speech = [(round(s, 3), round(e, 3)) for s, e in spans if e - s >= thresholds.min_speech_s]
    return silence_share, speech


# --------------------------------------------------------------------------- video measures


def luma_thumbnails(frames: np.ndarray, analysis_width: int) -> np.ndarray:
    """Rec.709 luma in [0, 1] of frames subsampled by a stride to about `analysis_width` wide.

    Striding reads a few pixels per frame instead of the whole 1080p tensor, which
    keeps the review fast; black, stillness and motion are area measures that
    survive the subsampling.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got shape {frames.shape}")
    stride = max(1, frames.shape[2] // analysis_width)
    small = frames[:, ::stride, ::stride].astype(np.float32)
    return (small @ np.array([0.2126, 0.7152, 0.0722], np.float32)) / 255.0


def black_and_frozen(
    luma: np.ndarray, fps: float, thresholds: ReviewThresholds
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame black and frozen masks, and the motion envelope (mean |luma change|, frames 1..T-1).

    A frame is still when almost no pixel moved: counting moved pixels rather
    than averaging the change keeps a small moving region (a mouth, a logo)
    from reading as frozen. A frozen frame is still and not black (a black
    stretch is reported as black only). Runs shorter than `min_stretch_s` are dropped.
    """
    min_frames = max(1, round(thresholds.min_stretch_s * fps))
    black = (luma <= thresholds.black_pixel_luma).mean(axis=(1, 2)) >= thresholds.black_frame_pixel_share
    change = np.abs(np.diff(luma, axis=0))
    motion = change.mean(axis=(1, 2))
    moved_share = (change > thresholds.frozen_pixel_change).mean(axis=(1, 2))
    same_as_previous = np.concatenate([[False], moved_share < thresholds.frozen_moved_share])
    # The first frame of a still run is frozen too: it is the picture that holds.
    still = same_as_previous | np.concatenate([same_as_previous[1:], [False]])
    frozen = _keep_long_runs(still & ~black, min_frames)
    return _keep_long_runs(black, min_frames), frozen, motion


# --------------------------------------------------------------------------- content checks


def _fold(text: str) -> str:
    """Case- and accent-insensitive form: NFKD, combining marks dropped, casefolded."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def _is_unspaced_script(ch: str) -> bool:
    """Scripts written without spaces between words, where a term may sit inside a run of letters."""
    name = unicodedata.name(ch, "")
    return name.startswith(("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR"))


def find_forbidden_terms(texts: Sequence[str], forbidden_terms: Sequence[str]) -> list[str]:
    """The forbidden terms (as given) that occur in any text as whole words, ignoring case and accents."""
    haystack = "\n".join(_fold(t) for t in texts)
    found = []
    for term in forbidden_terms:
        folded = _fold(term).strip()
        if not folded:
            continue
        pattern = re.escape(folded)
        if not _is_unspaced_script(folded[0]):
            pattern = r"(?<!\w)" + pattern
        if not _is_unspaced_script(folded[-1]):
            pattern += r"(?!\w)"
        if re.search(pattern, haystack):
            found.append(term)
    return found


# --------------------------------------------------------------------------- measure, then decide


def measure_clip(
    frames: np.ndarray,
    audio: np.ndarray,
    sample_rate: int,
    fps: float,
    expected: ReviewExpectation,
    thresholds: ReviewThresholds | None = None,
) -> ReviewSignals:
    """Every measure of one clip (frames uint8 [T, H, W, 3], audio float [samples, channels])."""
    thresholds = thresholds or ReviewThresholds()
    audio = as_channels(np.asarray(audio, dtype=np.float32))
    num_frames, height, width = frames.shape[:3]

    luma = luma_thumbnails(frames, thresholds.analysis_width)
    black, frozen, motion = black_and_frozen(luma, fps, thresholds)
    silence_share, speech_spans = silence_and_speech(audio, sample_rate, thresholds)
    sample_peak = float(np.abs(audio).max()) if audio.size else 0.0
    av_offset_ms, av_confidence = estimate_av_offset(motion, audio, sample_rate, fps,
                                                     thresholds.av_max_lag_ms, thresholds.av_hop_ms)
    return ReviewSignals(
        duration_s=num_frames / fps,
        audio_duration_s=audio.shape[0] / sample_rate,
        fps=fps,
        width=width,
        height=height,
        black_frame_share=float(black.mean()),
        frozen_frame_share=float(frozen.mean()),
        silence_share=silence_share,
        clipping_share=float((np.abs(audio) >= thresholds.clip_level).mean()) if audio.size else 0.0,
        integrated_lufs=integrated_loudness(audio, sample_rate),
        sample_peak_dbfs=20.0 * np.log10(sample_peak) if sample_peak > 0 else None,
        true_peak_dbtp=true_peak_dbtp(audio),
        av_offset_ms=av_offset_ms,
        av_offset_confidence=av_confidence,
        speech_spans=speech_spans,
        forbidden_terms_found=find_forbidden_terms([line.line for line in expected.dialogue],
                                                   expected.forbidden_terms),
    )


def decide_review(signals: ReviewSignals, expected: ReviewExpectation,
                  thresholds: ReviewThresholds | None = None) -> ReviewResult:
    """The review status and its reasons, decided once from the measures (for a
    delivered clip: :meth:`ReviewSignals.as_delivered`)."""
    thresholds = thresholds or ReviewThresholds()
    m = signals
    hard: list[str] = []
    if abs(m.duration_s - expected.duration_s) > thresholds.duration_tolerance_s:
        hard.append(f"duration {m.duration_s:.2f}s, requested {expected.duration_s:g}s")
    if expected.audio and abs(m.audio_duration_s - m.duration_s) > thresholds.duration_tolerance_s:
        hard.append(f"audio lasts {m.audio_duration_s:.2f}s, video {m.duration_s:.2f}s")
    if abs(m.fps - expected.fps) > thresholds.fps_tolerance:
        hard.append(f"fps {m.fps:g}, requested {expected.fps:g}")
    if (m.width, m.height) != (expected.width, expected.height):
        hard.append(f"size {m.width}x{m.height}, requested {expected.width}x{expected.height}")
    if expected.audio and expected.has_dialogue and m.silence_share >= thresholds.silent_clip_share:
        hard.append(f"silent clip ({m.silence_share:.0%} silence) but {len(expected.dialogue)} dialogue lines")
    if m.forbidden_terms_found:
        hard.append(f"forbidden terms in dialogue: {', '.join(m.forbidden_terms_found)}")
    if expected.voiceover:
        if m.voiceover_correlation is None or m.voiceover_duration_s is None:
            hard.append("voice-over clip whose delivered audio was not compared with the recording")
        else:
            if abs(m.voiceover_duration_s - expected.duration_s) > thresholds.duration_tolerance_s:
                hard.append(f"delivered voice-over lasts {m.voiceover_duration_s:.2f}s, the clip "
                            f"{expected.duration_s:g}s")
            if m.voiceover_correlation < thresholds.min_voiceover_correlation:
                hard.append(f"delivered audio is not the supplied voice-over (correlation "
                            f"{m.voiceover_correlation:.2f}, needs {thresholds.min_voiceover_correlation:g})")

    soft: list[str] = []
    if not expected.audio:  # a silent delivery: its (discarded) audio is not judged
        m = m.model_copy(update={"av_offset_ms": None, "integrated_lufs": None, "clipping_share": 0.0})
    if (
        m.av_offset_ms is not None
        and abs(m.av_offset_ms) > thresholds.max_av_offset_ms
        and m.av_offset_confidence >= thresholds.min_av_offset_confidence
    ):
        soft.append(f"audio-video offset {m.av_offset_ms:+.0f} ms (confidence {m.av_offset_confidence:.2f})")
    if (
        m.integrated_lufs is not None
        and abs(m.integrated_lufs - thresholds.loudness_target_lufs) > thresholds.loudness_tolerance_lu
    ):
        soft.append(f"loudness {m.integrated_lufs:.1f} LUFS, target {thresholds.loudness_target_lufs:g}")
    if m.black_frame_share > thresholds.max_black_share:
        soft.append(f"black frames {m.black_frame_share:.0%}")
    if m.frozen_frame_share > thresholds.max_frozen_share:
        soft.append(f"frozen frames {m.frozen_frame_share:.0%}")
    if m.clipping_share > thresholds.max_clipping_share:
        soft.append(f"clipped samples {m.clipping_share:.2%}")

    status: ReviewStatus = "rejected" if hard else "needs_review" if soft else "auto_approved"
    return ReviewResult(**signals.model_dump(), review_status=status, review_reasons=hard + soft,
                        quality_score=quality_score(m, expected, thresholds))


# Weights of the quality score's penalties (they add up to 1; README "Review tags and status").
QUALITY_WEIGHTS = {"black": 0.25, "frozen": 0.25, "silence": 0.15, "av_offset": 0.15, "clipping": 0.10,
                   "loudness": 0.10}


def quality_score(signals: ReviewSignals, expected: ReviewExpectation, thresholds: ReviewThresholds) -> float:
    """1 minus weighted penalties, each a share in [0, 1]: black and frozen frames (their shares),
    silence in a clip that has dialogue (its share), the A/V offset (|offset| / 200 ms, times its
    confidence), clipped samples (100 x their share) and loudness off target (|error| / 10 LU).
    Audio terms count only for deliveries with audio. Takes of one request differ only by seed,
    so the score ranks them; it is not comparable across formats."""
    m = signals
    penalties = {"black": m.black_frame_share, "frozen": m.frozen_frame_share}
    if expected.audio:
        penalties["silence"] = m.silence_share if expected.has_dialogue else 0.0
        penalties["av_offset"] = (min(1.0, abs(m.av_offset_ms) / 200.0) * m.av_offset_confidence
                                  if m.av_offset_ms is not None else 0.0)
        penalties["clipping"] = min(1.0, 100.0 * m.clipping_share)
        penalties["loudness"] = (min(1.0, abs(m.integrated_lufs - thresholds.loudness_target_lufs) / 10.0)
                                 if m.integrated_lufs is not None else 0.0)
    score = 1.0 - sum(QUALITY_WEIGHTS[name] * min(1.0, max(0.0, value)) for name, value in penalties.items())
    return round(max(0.0, score), 4)
