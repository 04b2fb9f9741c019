"""Synthetic clips with known faults, made by the real ffmpeg from lavfi sources.

Imported by the review and mux integration tests (pytest puts this folder on
sys.path). Clips are tiny: 64x48 at 25 fps, a few seconds, H.264 + AAC in MP4.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.media import run_ffmpeg

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
