"""ffmpeg and PyAV: which ffmpeg runs, what it can do, and the one way paddock runs it.

Which binary: `PADDOCK_FFMPEG` (a path) wins; else the `ffmpeg` on PATH; else
the static build the `imageio-ffmpeg` wheel ships, so a pip install is all
paddock needs. Deployments use whatever their image has (Debian's 5.1, Ubuntu's
4.4, a recent static build), so every input paddock hands ffmpeg names its
format completely and every filter graph is valid from ffmpeg 4.2 on;
`check_ffmpeg` refuses, in one line, a binary that lacks a piece mux needs.

Every call goes through `run_ffmpeg`, with a timeout that grows with the clip
(`ffmpeg_timeout_s`): a hung or crashed encode becomes an `FFmpegError` that
carries ffmpeg's last lines, never a stuck worker. Files are probed and
decoded with PyAV (no ffprobe needed).
"""

from __future__ import annotations

import functools
import io
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np
from pydantic import BaseModel, ConfigDict

FFMPEG_ENV = "PADDOCK_FFMPEG"
TIMEOUT_SCALE_ENV = "PADDOCK_FFMPEG_TIMEOUT_SCALE"
MIN_VERSION = (4, 2)
# libavutil of ffmpeg 4.2, for builds whose version string is a git snapshot ("N-12345-g...").
MIN_LIBAVUTIL = (56, 31)
# What mux asks of ffmpeg: its encoders, filters, demuxers (raw inputs) and muxers.
REQUIRED_ENCODERS = ("libx264", "aac", "pcm_s24le", "mjpeg")
REQUIRED_FILTERS = ("loudnorm", "aresample", "aformat", "crop")
REQUIRED_DEMUXERS = ("f32le", "rawvideo", "wav")
REQUIRED_MUXERS = ("mp4", "wav", "image2", "null")
# Raw audio carries no layout: name it, or older builds refuse to negotiate one.
CHANNEL_LAYOUTS = {1: "mono", 2: "stereo"}
TAIL_LINES = 15


class FFmpegError(RuntimeError):
    """An ffmpeg command failed or timed out; the message says which step and carries ffmpeg's last lines."""


class FFmpegSetupError(RuntimeError):
    """The ffmpeg paddock would run cannot do the job; one line naming the binary, what it lacks and the fix."""


class FFmpegInfo(BaseModel):
    """What a probe of one ffmpeg binary found."""

    model_config = ConfigDict(frozen=True)

    path: str
    version: str
    version_ok: bool
    missing: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.version_ok and not self.missing

    def problem(self) -> str | None:
        """One line naming what is wrong and the fix, or None."""
        lacks = ([] if self.version_ok else [f"version {'.'.join(map(str, MIN_VERSION))} or later"]) + list(
            self.missing
        )
        if not lacks:
            return None
        return (
            f"ffmpeg {self.path} (version {self.version}) lacks {', '.join(lacks)}: install an ffmpeg "
            f"with them (Debian/Ubuntu: apt-get install ffmpeg) or set {FFMPEG_ENV} to the path of one"
        )


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary paddock runs: $PADDOCK_FFMPEG, else PATH's, else imageio-ffmpeg's."""
    chosen = os.environ.get(FFMPEG_ENV)
    if chosen:
        if not (os.path.isfile(chosen) and os.access(chosen, os.X_OK)):
            raise FFmpegSetupError(f"{FFMPEG_ENV}={chosen} is not an executable file: point it at an ffmpeg binary")
        return chosen
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise FFmpegSetupError(
            f"no ffmpeg on PATH and imageio-ffmpeg is not installed: install ffmpeg or set {FFMPEG_ENV}"
        ) from exc
    return imageio_ffmpeg.get_ffmpeg_exe()


def _listed_names(text: str) -> set[str]:
    """Names in `ffmpeg -encoders/-filters/-muxers/-demuxers` output: the word after the flags column."""
    names = set()
    body = text.split("---", 1)[-1] if "---" in text else text
    for line in body.splitlines():
        parts = line.split()
        if len(parts) >= 2 and re.fullmatch(r"[A-Z.|]{1,8}", parts[0]):
            names.update(parts[1].split(","))  # muxers list aliases as "mov,mp4,m4a"
    return names


def _version_ok(version_text: str) -> tuple[str, bool]:
    first = version_text.splitlines()[0] if version_text else ""
    match = re.search(r"ffmpeg version (\S+)", first)
    version = match.group(1) if match else "unknown"
    numbers = re.match(r"n?(\d+)\.(\d+)", version)
    if numbers:
        return version, (int(numbers[1]), int(numbers[2])) >= MIN_VERSION
    avutil = re.search(r"libavutil\s+(\d+)\.\s*(\d+)", version_text)
    return version, bool(avutil) and (int(avutil[1]), int(avutil[2])) >= MIN_LIBAVUTIL


@functools.lru_cache(maxsize=8)
def _probe(path: str, mtime_ns: int) -> FFmpegInfo:
    def ask(*args: str) -> str:
        try:
            proc = subprocess.run([path, "-hide_banner", *args], capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FFmpegSetupError(f"ffmpeg {path} does not run ({exc}): install ffmpeg or set {FFMPEG_ENV}") from exc
        return proc.stdout.decode("utf-8", "replace") + proc.stderr.decode("utf-8", "replace")

    version, version_ok = _version_ok(ask("-version"))
    missing = []
    for kind, wanted in (
        ("encoder", REQUIRED_ENCODERS),
        ("filter", REQUIRED_FILTERS),
        ("demuxer", REQUIRED_DEMUXERS),
        ("muxer", REQUIRED_MUXERS),
    ):
        have = _listed_names(ask(f"-{kind}s"))
        missing += [f"the {name} {kind}" for name in wanted if name not in have]
    return FFmpegInfo(path=path, version=version, version_ok=version_ok, missing=tuple(missing))


def probe_ffmpeg(path: str | None = None) -> FFmpegInfo:
    """Version, and which of the encoders, filters and formats mux needs are missing (cached per binary)."""
    path = path or ffmpeg_exe()
    try:
        mtime_ns = os.stat(path).st_mtime_ns
    except OSError as exc:
        raise FFmpegSetupError(f"ffmpeg {path} not found: install ffmpeg or set {FFMPEG_ENV}") from exc
    return _probe(path, mtime_ns)


def check_ffmpeg(path: str | None = None) -> FFmpegInfo:
    """Refuse, before any model work, an ffmpeg that would fail every mux."""
    info = probe_ffmpeg(path)
    problem = info.problem()
    if problem:
        raise FFmpegSetupError(problem)
    return info


def ffmpeg_timeout_s(duration_s: float, width: int = 0, height: int = 0) -> float:
    """How long one ffmpeg call on a clip may take: grows with its length and its pixels (x $PADDOCK_FFMPEG_TIMEOUT_SCALE)."""
    pixels_vs_720p = max(1.0, width * height / (1280 * 720))
    scale = float(os.environ.get(TIMEOUT_SCALE_ENV) or 1.0)
    return scale * (30.0 + 8.0 * max(duration_s, 1.0) * pixels_vs_720p)


def log_tail(log: str, lines: int = TAIL_LINES) -> str:
    """The last lines of a tool's log, where ffmpeg says what went wrong."""
    kept = [line for line in log.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def run_ffmpeg(
    args: list[str], *, timeout_s: float = 120.0, what: str = "ffmpeg", stdin: bytes | Iterable[bytes] | None = None
) -> str:
    """Run our ffmpeg with `args` (without the binary); return its stderr, where filters log.

    `stdin` may be bytes or an iterable of chunks (frames are streamed, never
    held twice). The process is killed at `timeout_s`; a non-zero exit or a
    timeout raises FFmpegError naming `what` with ffmpeg's last lines.
    """
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostats", *(["-nostdin"] if stdin is None else []), *args]
    timed_out = threading.Event()
    # stderr goes to a file: a pipe nobody drains would fill up and stall ffmpeg.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log
        )

        def kill() -> None:
            timed_out.set()
            proc.kill()

        watchdog = threading.Timer(timeout_s, kill)
        watchdog.daemon = True
        watchdog.start()
        try:
            if stdin is not None:
                chunks = [stdin] if isinstance(stdin, (bytes, bytearray, memoryview)) else stdin
                # ffmpeg may exit early, breaking the pipe: its status and log say why.
                try:
                    for chunk in chunks:
                        proc.stdin.write(chunk)
                    proc.stdin.close()
                except (BrokenPipeError, ValueError, OSError):
                    pass
            returncode = proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:  # an exception while feeding it
                proc.kill()
                proc.wait()
        log.seek(0)
        stderr = log.read().decode("utf-8", "replace")
    if timed_out.is_set():
        raise FFmpegError(f"{what}: ffmpeg {cmd[0]} timed out after {timeout_s:.0f} s and was killed; its last lines:\n"
                          f"{log_tail(stderr)}")
    if returncode != 0:
        raise FFmpegError(f"{what}: ffmpeg {cmd[0]} exited with status {returncode}; its last lines:\n{log_tail(stderr)}")
    return stderr


def read_uri_bytes(uri: str, s3_endpoint: str | None = None, what: str = "file") -> bytes:
    """The bytes of a local path, a file:///absolute URI or an s3://bucket/key object (the
    standard AWS credential chain; ``s3_endpoint`` None takes AWS_ENDPOINT_URL or AWS). Errors
    name ``what`` (the field) and the fix."""
    scheme, sep, rest = uri.partition("://")
    if sep and scheme == "s3":
        from model.reference_image import read_s3_object  # imported here: it brings in boto3

        return read_s3_object(uri, s3_endpoint, what)
    if sep and scheme != "file":
        raise ValueError(f"{what}: the {scheme}:// scheme is not read (got {uri!r}); give a path, file:// or s3://")
    path = Path(rest if sep else uri)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no file at {path}")
    return path.read_bytes()


def load_audio(source: str | Path | bytes) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of a file (a path, or the file's bytes) with PyAV into
    float32 [samples, channels] and its rate.

    Sample 0 sits at container time 0: a stream that starts later is padded
    with silence at the head, one that starts earlier is trimmed.
    """
    if isinstance(source, bytes):
        path, opened = "<bytes>", io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"media file not found: {path}")
        opened = str(path)
    with av.open(opened) as container:
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


def fit_audio(audio: np.ndarray, samples: int) -> np.ndarray:
    """``audio`` [samples, channels] trimmed, or padded with silence at the end, to ``samples``."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.shape[0] >= samples:
        return np.ascontiguousarray(audio[:samples])
    return np.concatenate([audio, np.zeros((samples - audio.shape[0], audio.shape[1]), np.float32)])


def write_raw_audio(path: str | Path, audio: np.ndarray) -> None:
    """Write float32 interleaved samples (ffmpeg input `-f f32le -ar SR -ac CH -channel_layout L`)."""
    samples = np.asarray(audio, dtype="<f4")
    if samples.ndim != 2:
        raise ValueError(f"audio must be [samples, channels], got shape {samples.shape}")
    Path(path).write_bytes(np.ascontiguousarray(samples).tobytes())
