"""Review measures on numpy signals with analytically known answers."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.loudness import integrated_loudness, k_weighting_biquads, true_peak_dbtp
from pipeline.review import (
    ReviewExpectation,
    ReviewResult,
    ReviewThresholds,
    decide_review,
    find_forbidden_terms,
    measure_clip,
)
from schemas.render import RenderRequest

SR = 48000


def review_clip(frames, audio, sample_rate, fps, expected, thresholds=None) -> ReviewResult:
    """The review of a clip as generated: measured, then decided."""
    return decide_review(measure_clip(frames, audio, sample_rate, fps, expected, thresholds), expected, thresholds)


def sine(freq: float, amplitude: float, seconds: float, sample_rate: int = SR, phase: float = 0.0) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return amplitude * np.sin(2 * np.pi * freq * t + phase)


def test_k_weighting_at_48k_reproduces_the_bs1770_table():
    (shelf_b, shelf_a), (hp_b, hp_a) = k_weighting_biquads(48000)
    np.testing.assert_allclose(shelf_b, [1.53512485958697, -2.69169618940638, 1.19839281085285], atol=1e-10)
    np.testing.assert_allclose(shelf_a, [1.0, -1.69065929318241, 0.73248077421585], atol=1e-10)
    np.testing.assert_allclose(hp_b, [1.0, -2.0, 1.0])
    np.testing.assert_allclose(hp_a, [1.0, -1.99004745483398, 0.99007225036621], atol=1e-10)


@pytest.mark.parametrize("sample_rate", [44100, 48000])
def test_997hz_sine_reads_as_bs1770_specifies(sample_rate):
    # BS.1770: a 0 dBFS 997 Hz sine in one channel reads -3.01 LKFS; in both channels 0 LKFS.
    tone = sine(997, 0.1, 3.0, sample_rate)
    assert integrated_loudness(tone, sample_rate) == pytest.approx(-23.01, abs=0.02)
    assert integrated_loudness(np.stack([tone, tone], axis=1), sample_rate) == pytest.approx(-20.0, abs=0.02)


def test_gates_drop_silence_and_quiet_passages():
    loud = sine(997, 0.1, 2.0)
    silence = np.zeros(2 * SR)
    quiet = sine(997, 0.001, 2.0)  # -40 dB: below the -10 LU relative gate, above the -70 LUFS absolute one
    # 17 blocks lie in the loud part; the 3 straddling the edge (75, 50, 25 % loud) pass the
    # gates too; every other block is gated out: mean power 18.5 / 20 of the tone's.
    gated_mean = -23.01 + 10 * np.log10(18.5 / 20)
    assert integrated_loudness(np.concatenate([loud, silence]), SR) == pytest.approx(gated_mean, abs=0.02)
    assert integrated_loudness(np.concatenate([loud, quiet]), SR) == pytest.approx(gated_mean, abs=0.02)
    assert integrated_loudness(silence, SR) is None
    assert integrated_loudness(loud[: SR // 4], SR) is None  # shorter than one 400 ms block


def test_true_peak_finds_the_intersample_peak():
    # fs/4 sine at 45 degrees: every sample sits at +-0.707 of a full-scale peak
    tone = sine(SR / 4, 1.0, 1.0, phase=np.pi / 4)
    assert 20 * np.log10(np.abs(tone).max()) == pytest.approx(-3.01, abs=0.01)
    assert true_peak_dbtp(tone) == pytest.approx(0.0, abs=0.1)
    assert true_peak_dbtp(np.zeros(1000)) is None


def test_forbidden_terms_ignore_case_and_accents_and_match_whole_words():
    lines = ["Le meilleur CAFE de la ville", "A classic taste", "Nur heute: GRÜN und günstig", "今日は無料です"]
    found = find_forbidden_terms(lines, ["café", "ass", "grun", "無料", "free", "  "])
    assert found == ["café", "grun", "無料"]


def moving_frames(num_frames: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)


def speechlike_audio(seconds: float, sample_rate: int = 44100, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.2 * rng.standard_normal((round(seconds * sample_rate), 2))).astype(np.float32)


def test_forbidden_term_in_dialogue_rejects_the_clip():
    expected = ReviewExpectation(
        duration_s=2,
        width=64,
        height=48,
        dialogue=[{"speaker": "Ana", "line": "¡Es GRATÍS hoy!"}],
        forbidden_terms=["gratis"],
    )
    result = review_clip(moving_frames(51), speechlike_audio(2.04), 44100, 25.0, expected)
    assert result.review_status == "rejected"
    assert result.forbidden_terms_found == ["gratis"]
    assert result.review_reasons == ["forbidden terms in dialogue: gratis"]


def test_loudness_far_off_target_needs_review():
    expected = ReviewExpectation(duration_s=2, width=64, height=48)
    quiet = speechlike_audio(2.04) * 0.01  # about -45 LUFS against a -14 target
    result = review_clip(moving_frames(51), quiet, 44100, 25.0, expected)
    assert result.review_status == "needs_review"
    assert result.integrated_lufs < -40
    assert any(reason.startswith("loudness") for reason in result.review_reasons)
    lenient = ReviewThresholds(loudness_tolerance_lu=40)
    assert review_clip(moving_frames(51), quiet, 44100, 25.0, expected, lenient).review_status == "auto_approved"


def test_wrong_fps_and_short_audio_are_rejected():
    expected = ReviewExpectation(duration_s=2, width=64, height=48)
    result = review_clip(moving_frames(48), speechlike_audio(1.0), 44100, 24.0, expected)
    assert result.review_status == "rejected"
    assert "fps 24, requested 25" in result.review_reasons
    assert "audio lasts 1.00s, video 2.00s" in result.review_reasons


def test_bad_array_shapes_name_the_problem():
    expected = ReviewExpectation(duration_s=2, width=64, height=48)
    with pytest.raises(ValueError, match=r"frames must be uint8 \[T, H, W, 3\]"):
        review_clip(np.zeros((51, 48, 64), np.uint8), speechlike_audio(2.04), 44100, 25.0, expected)
    with pytest.raises(ValueError, match=r"audio must be \[samples, channels\]"):
        review_clip(moving_frames(51), np.zeros((2, 3, 4)), 44100, 25.0, expected)


def test_expectation_from_render_request():
    request = RenderRequest(
        render_id="r1", brief_id="b1", campaign_id="c1", row_index=0, locale="es-ES", language="Spanish",
        aspect_ratio="16:9", resolution="256p", width=448, height=256,
        duration_s=5, seed=1, take=0, prompt="p",
        dialogue=[{"speaker": "Ana", "line": "Hola"}], forbidden_terms=["gratis"], model_id="m",
    )  # fmt: skip
    expected = ReviewExpectation.from_request(request)
    assert (expected.duration_s, expected.width, expected.height, expected.fps) == (5, 448, 256, 25)
    assert expected.has_dialogue and expected.forbidden_terms == ["gratis"]


def test_delivered_loudness_replaces_the_raw_measure():
    thresholds = ReviewThresholds()
    quiet = np.sin(np.linspace(0, 2000 * np.pi, 48000 * 3)).astype(np.float32)[:, None] * 0.01
    frames = np.random.default_rng(0).integers(0, 255, (76, 32, 32, 3), dtype=np.uint8)
    expected = ReviewExpectation(duration_s=3, width=32, height=32)
    signals = measure_clip(frames, quiet, 48000, 25.0, expected, thresholds)
    raw = decide_review(signals, expected, thresholds)
    assert raw.review_status == "needs_review" and raw.review_reasons[0].startswith("loudness")
    delivered = decide_review(signals.as_delivered(-14.2, -1.5), expected, thresholds)
    assert delivered.review_status == "auto_approved" and delivered.review_reasons == []
    assert (delivered.integrated_lufs, delivered.true_peak_dbtp) == (-14.2, -1.5)
    assert signals.integrated_lufs == raw.integrated_lufs != -14.2  # the measures themselves are left alone
    still_off = decide_review(signals.as_delivered(-30.0, -12.0), expected, thresholds)
    assert still_off.review_status == "needs_review" and still_off.review_reasons == ["loudness -30.0 LUFS, target -14"]


def test_a_hard_fault_stays_rejected_whatever_the_delivered_loudness():
    thresholds = ReviewThresholds()
    quiet = np.sin(np.linspace(0, 2000 * np.pi, 48000 * 3)).astype(np.float32)[:, None] * 0.01
    frames = np.random.default_rng(0).integers(0, 255, (76, 32, 32, 3), dtype=np.uint8)
    expected = ReviewExpectation(duration_s=5, width=32, height=32)  # the clip lasts 3 s
    delivered = decide_review(measure_clip(frames, quiet, 48000, 25.0, expected, thresholds).as_delivered(-14.0, -1.0),
                              expected, thresholds)
    assert delivered.review_status == "rejected"
    assert delivered.review_reasons == ["duration 3.04s, requested 5s"]
