"""mux: encode one reviewed clip into its deliverables with ffmpeg (through ffmpeg-python).

For each clip, in `out_dir`:
- `<stem>.mp4`: H.264 (yuv420p) + AAC 48 kHz, `+faststart` (moov before mdat),
  audio loudness-normalized to the channel profile with two-pass `loudnorm`;
- `<stem>.wav`: the normalized audio stem (48 kHz, 24-bit PCM);
- `<stem>.jpg`: a poster frame;
- `<stem>.vtt`: WebVTT captions, the dialogue lines spread over the speech the
  review found.

Frames are piped raw to ffmpeg's stdin, so a 1080p clip never exists twice in
memory. H.264 in yuv420p needs even dimensions: an odd width or height is
cropped by one pixel (the last column or row), and MuxedAssets reports the
size actually encoded.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import ffmpeg
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.media import (
    CHANNEL_LAYOUTS,
    FFmpegError,
    ffmpeg_timeout_s,
    load_audio,
    log_tail,
    run_ffmpeg,
    write_raw_audio,
)
from pipeline.loudness import integrated_loudness, true_peak_dbtp
from pipeline.review import luma_thumbnails
from schemas.brief import DialogueLine

OUTPUT_SAMPLE_RATE = 48000
LOUDNORM_WINDOW_S = 3


class ChannelProfile(BaseModel):
    """Loudness and encoding targets of one delivery channel."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "web"
    integrated_lufs: float = Field(-14.0, ge=-70.0, le=-5.0)
    true_peak_dbtp: float = Field(-1.0, ge=-9.0, le=0.0)
    lra: float = Field(11.0, ge=1.0, le=50.0, description="loudness range target, LU")
    video_crf: int = Field(18, ge=0, le=51)
    video_preset: str = "medium"
    audio_bitrate: str = "192k"


CHANNEL_PROFILES: dict[str, ChannelProfile] = {
    "web": ChannelProfile(),
    "broadcast": ChannelProfile(name="broadcast", integrated_lufs=-23.0, true_peak_dbtp=-1.0, lra=15.0),
    # web loudness with x264's fastest preset: drafts and runs where the encode is not the point (tests)
    "draft": ChannelProfile(name="draft", video_preset="ultrafast"),
}


class MuxedAssets(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mp4_path: Path
    wav_path: Path | None = Field(description="the normalized stem; None for a silent delivery (audio=None)")
    poster_path: Path
    vtt_path: Path
    width: int = Field(description="encoded width (even)")
    height: int
    output_lufs: float | None = Field(description="integrated loudness of the MP4's audio, as decoded")
    output_true_peak_dbtp: float | None
    loudnorm_input_lufs: float | None = Field(description="ffmpeg loudnorm's first-pass measurement")
    loudnorm_mode: Literal["linear", "dynamic", "none"]


# --------------------------------------------------------------------------- ffmpeg


def _run(stream: Any, what: str, timeout_s: float, stdin: bytes | Iterable[bytes] | None = None) -> str:
    """Run an ffmpeg-python graph through the one runner; return stderr (where filters log)."""
    return run_ffmpeg(stream.overwrite_output().get_args(), timeout_s=timeout_s, what=what, stdin=stdin)


def _raw_audio_input(raw_path: Path, sample_rate: int, channels: int) -> Any:
    # Raw samples carry no format: name all of it (older builds refuse to guess the layout).
    if channels not in CHANNEL_LAYOUTS:
        raise ValueError(f"audio must have 1 or 2 channels, got {channels}")
    return ffmpeg.input(
        str(raw_path), format="f32le", ar=sample_rate, ac=channels, channel_layout=CHANNEL_LAYOUTS[channels]
    )


def _delivery_format(audio: Any, channels: int, delivered_samples: int) -> Any:
    # loudnorm works at 192 kHz; bring it back to the delivery rate and the clip's exact length,
    # in the WAV stem's sample format and layout.
    return (
        audio.filter("aresample", OUTPUT_SAMPLE_RATE)
        .filter("atrim", end_sample=delivered_samples)
        .filter("aformat", sample_fmts="s32", sample_rates=OUTPUT_SAMPLE_RATE, channel_layouts=CHANNEL_LAYOUTS[channels])
    )


def _loudnorm_report(log: str, source: Path) -> dict[str, str]:
    # loudnorm prints one JSON object after its "[Parsed_loudnorm_N ...]" line
    match = re.search(r"\{[^{}]*\"input_i\"[^{}]*\}", log)
    if match is None:
        raise FFmpegError(f"loudnorm printed no measurement for {source}:\n{log_tail(log)}")
    return json.loads(match.group(0))


def measure_loudnorm(
    raw_path: Path, sample_rate: int, channels: int, profile: ChannelProfile, timeout_s: float
) -> dict[str, float]:
    """First loudnorm pass: ffmpeg's measurement of the input (input_i, input_tp, input_lra, input_thresh, target_offset)."""
    graph = _raw_audio_input(raw_path, sample_rate, channels).filter(
        "loudnorm", I=profile.integrated_lufs, TP=profile.true_peak_dbtp, LRA=profile.lra, print_format="json"
    )
    log = _run(graph.output("-", format="null"), "measuring loudness (loudnorm pass 1)", timeout_s)
    report = _loudnorm_report(log, raw_path)
    return {key: float(value) for key, value in report.items() if key != "normalization_type"}


def normalize_to_wav(
    raw_path: Path, sample_rate: int, channels: int, profile: ChannelProfile, wav_path: Path, timeout_s: float
) -> tuple[float | None, str]:
    """Normalize to the profile into a 48 kHz 24-bit WAV of the clip's exact length.

    Returns loudnorm's measured input loudness and the mode used: "linear" (one
    gain for the whole clip, whenever that gain keeps the true peak under the
    ceiling: loudnorm's own rule), "dynamic" (loudnorm's dynamic mode, for audio
    whose peaks the linear gain would push over the ceiling), or "none" for
    audio with no gated loudness (silence), which is written as it is.

    The linear gain is applied with `volume`, not loudnorm's linear mode: before
    ffmpeg 5, loudnorm leaves a clip shorter than its 3 s window untouched in
    linear mode, and every clip of 2 s is that short.
    """
    measured = measure_loudnorm(raw_path, sample_rate, channels, profile, timeout_s)
    audio = _raw_audio_input(raw_path, sample_rate, channels)
    silent = not (math.isfinite(measured["input_i"]) and measured["input_i"] > -70.0)
    gain_db = profile.integrated_lufs - measured["input_i"]
    if silent:
        mode = "none"
    elif measured["input_tp"] + gain_db <= profile.true_peak_dbtp:
        mode = "linear"
        audio = audio.filter("volume", f"{gain_db:.3f}dB", precision="double")
    else:
        mode = "dynamic"
        # trailing silence (gated out of every measure, trimmed again below) gives short clips a full window
        audio = audio.filter("apad", pad_len=LOUDNORM_WINDOW_S * sample_rate).filter(
            "loudnorm",
            I=profile.integrated_lufs,
            TP=profile.true_peak_dbtp,
            LRA=profile.lra,
            measured_I=measured["input_i"],
            measured_TP=measured["input_tp"],
            measured_LRA=measured["input_lra"],
            measured_thresh=measured["input_thresh"],
            # loudnorm reports an infinite offset for some inputs and then refuses it as an option
            offset=measured["target_offset"] if math.isfinite(measured["target_offset"]) else 0.0,
        )
    num_samples = raw_path.stat().st_size // (4 * channels)
    delivered_samples = round(num_samples * OUTPUT_SAMPLE_RATE / sample_rate)
    output = _delivery_format(audio, channels, delivered_samples).output(
        str(wav_path), acodec="pcm_s24le", ar=OUTPUT_SAMPLE_RATE
    )
    _run(output, f"normalizing loudness into {wav_path.name}", timeout_s)
    return (None if silent else measured["input_i"]), mode


# --------------------------------------------------------------------------- video


def even_size(width: int, height: int) -> tuple[int, int]:
    """The size H.264 yuv420p can carry: odd dimensions lose their last column or row."""
    return width - width % 2, height - height % 2


def _raw_video_input(width: int, height: int, fps: float) -> Any:
    return ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=fps)


def encode_mp4(
    frames: np.ndarray, fps: float, audio_wav: Path | None, mp4_path: Path, profile: ChannelProfile, timeout_s: float
) -> tuple[int, int]:
    """Pipe raw RGB frames into libx264 and mux them with the WAV as AAC 48 kHz (no audio track
    without a WAV), faststart. Returns the encoded size."""
    num_frames, height, width = frames.shape[:3]
    out_width, out_height = even_size(width, height)
    video = _raw_video_input(width, height, fps)
    if (out_width, out_height) != (width, height):
        video = video.filter("crop", out_width, out_height, 0, 0)
    video_args = {"vcodec": "libx264", "pix_fmt": "yuv420p", "r": fps, "crf": profile.video_crf,
                  "preset": profile.video_preset, "movflags": "+faststart"}
    if audio_wav is None:
        output = ffmpeg.output(video, str(mp4_path), an=None, **video_args)
    else:
        output = ffmpeg.output(video, ffmpeg.input(str(audio_wav)), str(mp4_path), acodec="aac",
                               ar=OUTPUT_SAMPLE_RATE, **{"b:a": profile.audio_bitrate}, **video_args)
    frame_bytes = (np.ascontiguousarray(frame, dtype=np.uint8).data for frame in frames)
    _run(output, f"encoding {mp4_path} ({num_frames} frames {width}x{height})", timeout_s, stdin=frame_bytes)
    return out_width, out_height


def poster_frame_index(frames: np.ndarray) -> int:
    """The most detailed frame (highest luma spread) of the clip's middle half: avoids fades and black frames."""
    num_frames = frames.shape[0]
    start, stop = num_frames // 4, max(num_frames // 4 + 1, (3 * num_frames) // 4)
    luma = luma_thumbnails(frames[start:stop], analysis_width=64)
    return start + int(np.argmax(luma.reshape(luma.shape[0], -1).std(axis=1)))


def write_poster(frame: np.ndarray, jpg_path: Path, timeout_s: float) -> None:
    height, width = frame.shape[:2]
    graph = _raw_video_input(width, height, 1).output(str(jpg_path), vframes=1, **{"q:v": 2})
    _run(graph, f"writing poster {jpg_path}", timeout_s, stdin=np.ascontiguousarray(frame).tobytes())


# --------------------------------------------------------------------------- captions


def _vtt_time(seconds: float) -> str:
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"


def _vtt_escape(text: str) -> str:
    # "&", "<" and ">" are markup in cue text; escaping ">" also rules out a stray "-->"
    return " ".join(text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").split())


def caption_cues(
    dialogue: Sequence[DialogueLine], speech_spans: Sequence[tuple[float, float]], duration_s: float
) -> list[tuple[float, float, str]]:
    """(start_s, end_s, "Speaker: line") per dialogue line, in order.

    The speech spans are laid end to end into one speech timeline; each line gets
    a slice of it proportional to its length in characters, mapped back to clip
    time. With no speech found, the whole clip is the timeline.
    """
    spans = [(max(0.0, s), min(duration_s, e)) for s, e in speech_spans if min(duration_s, e) > max(0.0, s)]
    if not spans:
        spans = [(0.0, duration_s)]
    lengths = np.array([len(d.line) for d in dialogue], dtype=np.float64)
    if lengths.size == 0:
        return []
    span_starts = np.array([s for s, _ in spans])
    span_lengths = np.array([e - s for s, e in spans])
    span_offsets = np.concatenate([[0.0], np.cumsum(span_lengths)])  # speech time where each span begins
    total_speech = span_offsets[-1]

    def to_clip_time(speech_time: float, at_end: bool) -> float:
        # a boundary that falls exactly between spans ends the earlier one, starts the later one
        side = "left" if at_end else "right"
        i = int(np.clip(np.searchsorted(span_offsets, speech_time, side=side) - 1, 0, len(spans) - 1))
        return float(span_starts[i] + speech_time - span_offsets[i])

    bounds = np.concatenate([[0.0], np.cumsum(lengths)]) / lengths.sum() * total_speech
    return [
        (to_clip_time(start, at_end=False), to_clip_time(end, at_end=True), f"{d.speaker}: {d.line}")
        for d, start, end in zip(dialogue, bounds[:-1], bounds[1:])
    ]


def write_vtt(cues: Sequence[tuple[float, float, str]], vtt_path: Path) -> None:
    blocks = ["WEBVTT", ""]
    for number, (start, end, text) in enumerate(cues, start=1):
        end = max(end, start + 0.001)
        blocks += [str(number), f"{_vtt_time(start)} --> {_vtt_time(end)}", _vtt_escape(text), ""]
    vtt_path.write_text("\n".join(blocks), encoding="utf-8")


# --------------------------------------------------------------------------- the stage


def mux_clip(
    frames: np.ndarray,
    audio: np.ndarray | None,
    sample_rate: int,
    fps: float,
    out_dir: str | Path,
    stem_name: str,
    dialogue: Sequence[DialogueLine | Mapping[str, str]] = (),
    speech_spans: Sequence[tuple[float, float]] = (),
    profile: ChannelProfile | None = None,
) -> MuxedAssets:
    """Write `<stem_name>.{mp4,wav,jpg,vtt}` for one clip into `out_dir` and measure the MP4's loudness.

    `audio=None` is a silent delivery: an MP4 with no audio track and no WAV stem.
    """
    profile = profile or ChannelProfile()
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if audio is not None:
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim == 1:
            audio = audio[:, None]
        if audio.ndim != 2 or audio.shape[0] == 0:
            raise ValueError(f"audio must be non-empty [samples, channels], got shape {audio.shape}")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", stem_name):
        raise ValueError(f"stem_name {stem_name!r} must be letters, digits, '.', '_' or '-' (it names files)")
    lines = [d if isinstance(d, DialogueLine) else DialogueLine.model_validate(dict(d)) for d in dialogue]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extensions = ("mp4", "wav", "jpg", "vtt") if audio is not None else ("mp4", "jpg", "vtt")
    final = {ext: out_dir / f"{stem_name}.{ext}" for ext in extensions}

    # Everything is made in a scratch folder and moved into place only when all of it
    # succeeded, so a failed clip never leaves a partial file that looks like a deliverable.
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{stem_name}.") as tmp:
        work = {ext: Path(tmp) / path.name for ext, path in final.items()}
        timeout_s = ffmpeg_timeout_s(frames.shape[0] / fps, frames.shape[2], frames.shape[1])
        input_lufs, loudnorm_mode, wav = None, "none", None
        if audio is not None:
            raw = Path(tmp) / "audio.f32"
            write_raw_audio(raw, audio)
            wav = work["wav"]
            input_lufs, loudnorm_mode = normalize_to_wav(raw, sample_rate, audio.shape[1], profile, wav, timeout_s)
        width, height = encode_mp4(frames, fps, wav, work["mp4"], profile, timeout_s)
        write_poster(frames[poster_frame_index(frames)], work["jpg"], timeout_s)
        write_vtt(caption_cues(lines, speech_spans, frames.shape[0] / fps), work["vtt"])
        delivered, delivered_rate = load_audio(work["mp4"]) if audio is not None else (None, 0)
        for ext, path in work.items():
            os.replace(path, final[ext])

    return MuxedAssets(
        mp4_path=final["mp4"],
        wav_path=final.get("wav"),
        poster_path=final["jpg"],
        vtt_path=final["vtt"],
        width=width,
        height=height,
        output_lufs=integrated_loudness(delivered, delivered_rate) if delivered is not None else None,
        output_true_peak_dbtp=true_peak_dbtp(delivered) if delivered is not None else None,
        loudnorm_input_lufs=input_lufs,
        loudnorm_mode=loudnorm_mode,
    )
