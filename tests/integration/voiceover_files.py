"""Voice-over fixtures in the forms phones and studios make them, written by the real ffmpeg:
16- and 24-bit WAV, FLAC and MP3 of a speech-like test signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.media import run_ffmpeg, write_raw_audio

CODECS = {"wav16": ("wav", ["-c:a", "pcm_s16le"]), "wav24": ("wav", ["-c:a", "pcm_s24le"]),
          "flac": ("flac", ["-c:a", "flac"]), "mp3": ("mp3", ["-c:a", "libmp3lame", "-b:a", "128k"])}


def speech_like(seconds: float, rate: int = 48000, seed: int = 0) -> np.ndarray:
    """Voiced syllables (a gliding 110-180 Hz fundamental with formant-like harmonics) of 150-300 ms
    with short pauses, mono float32 [samples, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    f0 = 140 + 35 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum((0.6 / k) * np.sin(k * phase) * (1.4 if k in (4, 9) else 1.0) for k in range(1, 14))
    envelope = np.zeros_like(t)
    start = 0.15
    while start < seconds - 0.2:
        length = rng.uniform(0.15, 0.3)
        span = (t >= start) & (t < start + length)
        envelope[span] = np.sin(np.pi * (t[span] - start) / length) ** 0.5
        start += length + rng.uniform(0.05, 0.2)
    signal = 0.25 * voice * envelope + 0.002 * rng.standard_normal(t.size)
    return signal.astype(np.float32)[:, None]


def write_recording(folder: Path, name: str, audio: np.ndarray, codec: str = "wav16", rate: int = 48000) -> Path:
    """``audio`` [samples, channels] as ``folder/name.<ext>`` in ``codec`` (a CODECS key)."""
    ext, args = CODECS[codec]
    raw = folder / f"{name}.f32"
    write_raw_audio(raw, audio)
    out = folder / f"{name}.{ext}"
    channels = audio.shape[1]
    run_ffmpeg(["-y", "-f", "f32le", "-ar", str(rate), "-ac", str(channels), "-i", str(raw), *args, str(out)],
               what=f"writing {out.name}")
    raw.unlink()
    return out
