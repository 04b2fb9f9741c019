"""The numpy BS.1770 meter against ffmpeg's own EBU R128 scanner (the `ebur128` filter)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pipeline.media import run_ffmpeg, write_raw_audio
from pipeline.loudness import integrated_loudness, true_peak_dbtp


def ffmpeg_ebur128(audio: np.ndarray, sample_rate: int, tmp_path) -> tuple[float, float]:
    """(integrated LUFS, true peak dBTP) as ffmpeg's ebur128 filter reports them."""
    raw = tmp_path / "audio.f32"
    write_raw_audio(raw, audio)
    log = run_ffmpeg(
        ["-f", "f32le", "-ar", str(sample_rate), "-ac", str(audio.shape[1]), "-i", str(raw),
         "-af", "ebur128=peak=true", "-f", "null", "-"]
    )  # fmt: skip
    integrated = float(re.findall(r"I:\s+(-?[\d.]+) LUFS", log)[-1])
    peak = float(re.findall(r"Peak:\s+(-?[\d.]+) dBFS", log)[-1])
    return integrated, peak


def gated_program(sample_rate: int, seed: int) -> np.ndarray:
    """Stereo programme that exercises both gates and the K-weighting's two ends:
    loud noise, digital silence (absolute gate), quiet noise (relative gate), 60 Hz and 5 kHz tones."""
    rng = np.random.default_rng(seed)
    t = np.arange(sample_rate) / sample_rate
    tones = np.stack([0.3 * np.sin(2 * np.pi * 60 * t), 0.2 * np.sin(2 * np.pi * 5000 * t)], axis=1)
    parts = [
        0.1 * rng.standard_normal((2 * sample_rate, 2)),
        np.zeros((sample_rate, 2)),
        0.01 * rng.standard_normal((2 * sample_rate, 2)),
        tones,
    ]
    return np.concatenate(parts).astype(np.float32)


@pytest.mark.parametrize("sample_rate", [22050, 44100, 48000])
def test_integrated_loudness_matches_ffmpeg_ebur128(sample_rate, tmp_path):
    audio = gated_program(sample_rate, seed=sample_rate)
    ffmpeg_lufs, _ = ffmpeg_ebur128(audio, sample_rate, tmp_path)
    assert integrated_loudness(audio, sample_rate) == pytest.approx(ffmpeg_lufs, abs=0.5)


def test_mono_speechlike_loudness_matches_ffmpeg(tmp_path):
    # amplitude-modulated band noise, the envelope of speech: 4 Hz syllables
    sample_rate = 44100
    rng = np.random.default_rng(7)
    t = np.arange(4 * sample_rate) / sample_rate
    noise = np.convolve(rng.standard_normal(t.size), np.ones(8) / 8, mode="same")
    audio = (0.3 * noise * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2)[:, None].astype(np.float32)
    ffmpeg_lufs, _ = ffmpeg_ebur128(audio, sample_rate, tmp_path)
    assert integrated_loudness(audio, sample_rate) == pytest.approx(ffmpeg_lufs, abs=0.5)


def test_true_peak_is_close_to_ffmpeg_and_not_below_it(tmp_path):
    # ffmpeg interpolates with a short FIR; the FFT oversampler is ideal band-limited,
    # so it may read a little higher on wide-band content, never lower.
    sample_rate = 48000
    audio = gated_program(sample_rate, seed=3)
    _, ffmpeg_peak = ffmpeg_ebur128(audio, sample_rate, tmp_path)
    ours = true_peak_dbtp(audio)
    assert ffmpeg_peak - 0.1 <= ours <= ffmpeg_peak + 1.0
