"""Loudness per ITU-R BS.1770-4 / EBU R128: K-weighting, gated integrated
loudness (LUFS) and true peak (dBTP). Review measures clips with it and mux
measures what it delivered with it."""

from __future__ import annotations

import numpy as np


# Analog prototypes of the K-weighting stages (the constants libebur128 derives
# the 48 kHz table of BS.1770 from), so the filters exist at any sample rate.
_SHELF_F0, _SHELF_GAIN_DB, _SHELF_Q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
_HIGHPASS_F0, _HIGHPASS_Q = 38.13547087602444, 0.5003270373238773
_ABSOLUTE_GATE_LUFS = -70.0
_RELATIVE_GATE_LU = -10.0


def k_weighting_biquads(sample_rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(b, a) of the two K-weighting biquads: the high-shelf pre-filter, then the RLB high-pass."""
    k = np.tan(np.pi * _SHELF_F0 / sample_rate)
    vh = 10.0 ** (_SHELF_GAIN_DB / 20.0)
    vb = vh**0.4996667741545416
    a0 = 1.0 + k / _SHELF_Q + k * k
    shelf_b = np.array([vh + vb * k / _SHELF_Q + k * k, 2.0 * (k * k - vh), vh - vb * k / _SHELF_Q + k * k]) / a0
    shelf_a = np.array([a0, 2.0 * (k * k - 1.0), 1.0 - k / _SHELF_Q + k * k]) / a0

    k = np.tan(np.pi * _HIGHPASS_F0 / sample_rate)
    a0 = 1.0 + k / _HIGHPASS_Q + k * k
    highpass_b = np.array([1.0, -2.0, 1.0])
    highpass_a = np.array([a0, 2.0 * (k * k - 1.0), 1.0 - k / _HIGHPASS_Q + k * k]) / a0
    return [(shelf_b, shelf_a), (highpass_b, highpass_a)]


def k_weight(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Apply the K-weighting filter to [samples, channels] audio (float64 out).

    The IIR cascade runs in the frequency domain on a transform padded by one
    second: the filters' impulse responses decay far below float64 precision
    within that pad, so the result equals time-domain filtering without a
    per-sample Python loop.
    """
    x = np.asarray(audio, dtype=np.float64)
    n = x.shape[0]
    n_fft = 1 << int(np.ceil(np.log2(n + sample_rate)))
    z_inv = np.exp(-2j * np.pi * np.arange(n_fft // 2 + 1) / n_fft)
    response = np.ones_like(z_inv)
    for b, a in k_weighting_biquads(sample_rate):
        response *= np.polyval(b[::-1], z_inv) / np.polyval(a[::-1], z_inv)
    spectrum = np.fft.rfft(x, n=n_fft, axis=0) * response[:, None]
    return np.fft.irfft(spectrum, n=n_fft, axis=0)[:n]


def _channel_weights(channels: int) -> np.ndarray:
    if channels == 6:  # 5.1 in L R C LFE Ls Rs order: LFE excluded, surrounds +1.5 dB
        return np.array([1.0, 1.0, 1.0, 0.0, 1.41, 1.41])
    return np.ones(channels)


def integrated_loudness(audio: np.ndarray, sample_rate: int) -> float | None:
    """Gated integrated loudness in LUFS (BS.1770-4): 400 ms blocks, 75 % overlap,
    absolute gate -70 LUFS, relative gate -10 LU. None when no block passes the gates."""
    audio = as_channels(audio)
    block, step = round(0.4 * sample_rate), round(0.1 * sample_rate)
    if audio.shape[0] < block:
        return None
    weighted = k_weight(audio, sample_rate)
    energy = np.concatenate([np.zeros((1, audio.shape[1])), np.cumsum(weighted**2, axis=0)])
    starts = np.arange(0, audio.shape[0] - block + 1, step)
    block_power = ((energy[starts + block] - energy[starts]) / block) @ _channel_weights(audio.shape[1])
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10.0 * np.log10(block_power)
    gated = block_lufs > _ABSOLUTE_GATE_LUFS
    if not gated.any():
        return None
    relative_gate = -0.691 + 10.0 * np.log10(block_power[gated].mean()) + _RELATIVE_GATE_LU
    gated &= block_lufs > relative_gate
    return float(-0.691 + 10.0 * np.log10(block_power[gated].mean()))


def true_peak_dbtp(audio: np.ndarray, oversample: int = 4) -> float | None:
    """True peak in dBTP from band-limited (FFT) 4x oversampling; None for digital silence."""
    audio = as_channels(audio).astype(np.float64)
    if audio.shape[0] == 0:
        return None
    # Zero guard at both ends so the transform's periodic wrap does not ring at the edges.
    guard = np.zeros((64, audio.shape[1]))
    padded = np.concatenate([guard, audio, guard])
    n = padded.shape[0]
    upsampled = np.fft.irfft(np.fft.rfft(padded, axis=0), n=n * oversample, axis=0) * oversample
    peak = float(np.abs(upsampled).max())
    return 20.0 * np.log10(peak) if peak > 0 else None



def as_channels(audio: np.ndarray) -> np.ndarray:
    """Audio as [samples, channels] (mono [samples] gets one channel)."""
    audio = np.asarray(audio)
    if audio.ndim == 1:
        return audio[:, None]
    if audio.ndim != 2:
        raise ValueError(f"audio must be [samples, channels], got shape {audio.shape}")
    return audio
