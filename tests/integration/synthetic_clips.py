"""Synthetic clips with known faults, made by the real ffmpeg from lavfi sources.

Imported by the review and mux integration tests (pytest puts this folder on
sys.path). Clips are tiny: 64x48 at 25 fps, a few seconds, H.264 + AAC in MP4.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from pipeline.media import load_audio, run_ffmpeg

WIDTH, HEIGHT, FPS, SAMPLE_RATE = 64, 48, 25, 44100


def make_clip(path: Path, video: str, audio: str, duration_s: float = 3.0, audio_codec: str = "aac") -> Path:
    """Encode lavfi `video` and `audio` graphs into `path` (MP4 with AAC by default;
    pass audio_codec="pcm_s16le" and an .mkv path to keep samples exact)."""
    run_ffmpeg(
        [
            "-y",
            "-f", "lavfi", "-i", f"{video}",
            "-f", "lavfi", "-i", f"{audio}",
            "-t", str(duration_s),
            "-c:v", "libx264", "-preset", "veryfast", "-crf", "12", "-pix_fmt", "yuv420p",
            "-c:a", audio_codec, *(["-b:a", "192k"] if audio_codec == "aac" else []),
            str(path),
        ]
    )  # fmt: skip
    return path


def moving_video(duration_s: float = 3.0) -> str:
    return f"testsrc=size={WIDTH}x{HEIGHT}:rate={FPS}:duration={duration_s}"


def still_black_video(duration_s: float = 3.0) -> str:
    return f"color=c=black:size={WIDTH}x{HEIGHT}:rate={FPS}:duration={duration_s}"


def tone_audio(expr: str, duration_s: float = 3.0) -> str:
    """An aevalsrc graph: `expr` is a mono expression of t (seconds)."""
    return f"aevalsrc='{expr}':sample_rate={SAMPLE_RATE}:duration={duration_s}"


def flash_and_beep(path: Path, flash_frame: int, beep_start_s: float, length_frames: int = 2) -> Path:
    """Black video with a white flash of `length_frames` frames at `flash_frame`, and silence
    with a 1 kHz beep of the same length starting at `beep_start_s` (a classic sync pattern)."""
    last = flash_frame + length_frames - 1
    beep_end_s = beep_start_s + length_frames / FPS
    video = f"{still_black_video()},drawbox=c=white:t=fill:enable='between(n,{flash_frame},{last})'"
    audio = tone_audio(f"0.5*sin(2*PI*1000*t)*gte(t,{beep_start_s})*lt(t,{beep_end_s})")
    return make_clip(path, video, audio)


@dataclass
class DecodedClip:
    """A clip as the generate stage hands it over: frames uint8 [T, H, W, 3], audio float32 [samples, channels]."""

    frames: np.ndarray
    audio: np.ndarray
    sample_rate: int
    fps: float


def load_clip(path: str | Path) -> DecodedClip:
    """Decode a media file (MP4, MKV, ...) with PyAV into RGB frames and float audio,
    aligned so that sample 0 and frame 0 share a timestamp, as in a generated clip."""
    path = Path(path)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate)
        frames = []
        video_start_s = None
        for frame in container.decode(stream):
            if video_start_s is None:
                video_start_s = frame.time or 0.0
            frames.append(frame.to_ndarray(format="rgb24"))
    audio, sample_rate = load_audio(path)
    audio = audio[max(0, round(video_start_s * sample_rate)) :]
    return DecodedClip(frames=np.stack(frames), audio=audio, sample_rate=sample_rate, fps=fps)


def top_level_boxes(path) -> list[str]:
    """The MP4's top-level box types in file order (faststart puts moov before mdat)."""
    data = path.read_bytes()
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:  # 64-bit size follows
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        boxes.append(kind.decode("latin-1"))
        if size == 0:
            break
        offset += size
    return boxes
