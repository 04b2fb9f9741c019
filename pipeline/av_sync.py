"""The audio-video offset of a clip, from its motion and its audio (review's A/V sync measure)."""

from __future__ import annotations

import numpy as np

from pipeline.loudness import as_channels


def estimate_av_offset(
    motion: np.ndarray, audio: np.ndarray, sample_rate: int, fps: float, max_lag_ms: float, hop_ms: float
) -> tuple[float | None, float]:
    """Audio-video offset in ms (positive: audio lags video) and a confidence in [0, 1].

    Both signals become change envelopes on a common `hop_ms` grid: the video
    one is the frame-difference motion, placed at each new frame's timestamp; the
    audio one is |change of RMS| between consecutive hops. Both are smoothed with
    the same Gaussian (half a frame period), so frame-rate sampling does not bias
    the peak; the lag of the best normalized cross-correlation within
    ±`max_lag_ms` is refined by a parabola through its neighbours.
    Confidence is how far that correlation stands above the best one more than
    two frames away, which is low for flat, noisy or periodic content.
    """
    hop_s = hop_ms / 1000.0
    hop = max(1, round(hop_s * sample_rate))
    hop_s = hop / sample_rate
    mono = as_channels(audio).astype(np.float64).mean(axis=1)
    n_hops = mono.shape[0] // hop
    if n_hops < 3 or motion.size < 2:
        return None, 0.0
    rms = np.sqrt((mono[: n_hops * hop] ** 2).reshape(n_hops, hop).mean(axis=1))
    audio_env = np.zeros(n_hops)
    audio_env[1:] = np.abs(np.diff(rms))  # change between hop i-1 and i sits at time i * hop_s

    video_env = np.zeros(n_hops)
    bins = np.round(np.arange(1, motion.size + 1) / fps / hop_s).astype(int)
    inside = bins < n_hops
    np.add.at(video_env, bins[inside], motion[inside])

    sigma = 0.5 / fps / hop_s
    radius = int(np.ceil(4 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    audio_env = np.convolve(audio_env, kernel, mode="same")
    video_env = np.convolve(video_env, kernel, mode="same")
    audio_env -= audio_env.mean()
    video_env -= video_env.mean()
    norm = np.linalg.norm(audio_env) * np.linalg.norm(video_env)
    if norm <= 1e-12:
        return None, 0.0

    max_lag = min(int(max_lag_ms / 1000.0 / hop_s), n_hops - 1)
    full = np.correlate(audio_env, video_env, mode="full") / norm  # index k <-> lag k - (n_hops - 1)
    lags = np.arange(-max_lag, max_lag + 1)
    corr = full[lags + n_hops - 1]
    best = int(np.argmax(corr))
    refined = float(lags[best])
    if 0 < best < corr.size - 1:
        left, centre, right = corr[best - 1], corr[best], corr[best + 1]
        curvature = left - 2.0 * centre + right
        if curvature < 0:
            refined += 0.5 * (left - right) / curvature
    far = np.abs(lags - lags[best]) > 2.0 / fps / hop_s
    runner_up = corr[far].max() if far.any() else 0.0
    confidence = float(np.clip(corr[best] - max(runner_up, 0.0), 0.0, 1.0))
    return refined * hop_s * 1000.0, confidence
