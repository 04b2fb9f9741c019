"""ffmpeg and PyAV helpers shared by the review and mux stages.

ffmpeg comes from PATH when it is installed there, else from the static build
that the `imageio-ffmpeg` wheel ships, so a pip install is all paddock needs.
There is no ffprobe: files are probed and decoded with PyAV.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np


class FFmpegError(RuntimeError):
    """An ffmpeg command failed; the message carries the command and the tail of its stderr."""


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: the one on PATH if any, else imageio-ffmpeg's bundled build."""
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - both are declared dependencies
        raise FFmpegError(
            "ffmpeg is not on PATH and imageio-ffmpeg is not installed; "
            "install ffmpeg or `pip install imageio-ffmpeg`"
        ) from exc
    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(args: list[str], *, stdin: bytes | None = None) -> str:
    """Run ffmpeg with `args` (without the binary) and return its stderr, where filters log."""
    cmd = [ffmpeg_exe(), "-hide_banner", *(["-nostdin"] if stdin is None else []), *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True)
    stderr = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise FFmpegError(f"ffmpeg exited {proc.returncode}: {' '.join(cmd)}\n{stderr[-2000:]}")
    return stderr


@dataclass
class DecodedClip:
    """A clip as the generate stage hands it over: frames uint8 [T, H, W, 3], audio float32 [samples, channels]."""

    frames: np.ndarray
    audio: np.ndarray
    sample_rate: int
    fps: float


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode a file's first audio stream with PyAV into float32 [samples, channels] and its rate.

    Sample 0 sits at container time 0: a stream that starts later is padded
    with silence at the head, one that starts earlier is trimmed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"media file not found: {path}")
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        sample_rate, channels = stream.rate, stream.channels
        # fltp: every decoded frame becomes [channels, samples] float32.
        resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=sample_rate)
        chunks = []
        start_s = None
        for frame in container.decode(stream):
            if start_s is None:
                start_s = frame.time or 0.0
            chunks.extend(out.to_ndarray() for out in resampler.resample(frame))
        chunks.extend(out.to_ndarray() for out in resampler.resample(None))

    audio = np.concatenate(chunks, axis=1).T if chunks else np.zeros((0, channels), np.float32)
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    shift = round((start_s or 0.0) * sample_rate)
    if shift > 0:
        audio = np.concatenate([np.zeros((shift, channels), np.float32), audio])
    elif shift < 0:
        audio = audio[-shift:]
    return audio, sample_rate


def load_clip(path: str | Path) -> DecodedClip:
    """Decode a media file (MP4, MKV, ...) with PyAV into RGB frames and float audio,
    aligned so that sample 0 and frame 0 share a timestamp, as in a generated clip."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"clip file not found: {path}")
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate)
        frames = []
        video_start_s = None
        for frame in container.decode(stream):
            if video_start_s is None:
                video_start_s = frame.time or 0.0
            frames.append(frame.to_ndarray(format="rgb24"))
    if not frames:
        raise ValueError(f"{path}: the video stream has no frames")
    audio, sample_rate = load_audio(path)
    audio = audio[max(0, round(video_start_s * sample_rate)) :]
    return DecodedClip(frames=np.stack(frames), audio=audio, sample_rate=sample_rate, fps=fps)


def write_raw_audio(path: str | Path, audio: np.ndarray) -> None:
    """Write float32 interleaved samples (ffmpeg input `-f f32le -ar SR -ac CH`)."""
    samples = np.asarray(audio, dtype="<f4")
    if samples.ndim != 2:
        raise ValueError(f"audio must be [samples, channels], got shape {samples.shape}")
    Path(path).write_bytes(np.ascontiguousarray(samples).tobytes())
