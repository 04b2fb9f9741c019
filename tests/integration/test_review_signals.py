"""Review tags on synthetic clips with known faults, made and decoded by the real ffmpeg/PyAV."""

from __future__ import annotations

import math

import pytest
from synthetic_clips import FPS, HEIGHT, WIDTH, flash_and_beep, load_clip, make_clip, moving_video, tone_audio

from pipeline.review import ReviewExpectation, ReviewResult, ReviewThresholds, decide_review, measure_clip

STEADY_TONE = tone_audio("0.3*sin(2*PI*440*t)")
EXPECTED = ReviewExpectation(duration_s=3, width=WIDTH, height=HEIGHT)
ONE_FRAME = 1 / (3 * FPS)


def review_file(path, expected: ReviewExpectation = EXPECTED) -> ReviewResult:
    clip = load_clip(path)
    return decide_review(measure_clip(clip.frames, clip.audio, clip.sample_rate, clip.fps, expected), expected)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("review_clips")
    return {
        "clean": make_clip(d / "clean.mp4", moving_video(), STEADY_TONE),
        # frames 25..49 (1.0 s to 2.0 s) black
        "black": make_clip(
            d / "black.mp4", f"{moving_video()},drawbox=c=black:t=fill:enable='between(n,25,49)'", STEADY_TONE
        ),
        # frames 25..49 all show frame 25
        "frozen": make_clip(
            d / "frozen.mp4", f"{moving_video()},split[a][b];[a][b]freezeframes=first=25:last=49:replace=25", STEADY_TONE
        ),
        # tone, then silence from 1.0 s to 2.0 s, then tone
        "silence": make_clip(d / "silence.mp4", moving_video(), tone_audio("0.3*sin(2*PI*440*t)*not(between(t,1,2))")),
        "beep_200ms_after_flash": flash_and_beep(d / "late.mp4", flash_frame=25, beep_start_s=1.0 + 0.200),
        "beep_120ms_before_flash": flash_and_beep(d / "early.mp4", flash_frame=40, beep_start_s=1.6 - 0.120),
        "beep_with_flash": flash_and_beep(d / "sync.mp4", flash_frame=40, beep_start_s=1.6),
    }


def test_load_clip_gives_generate_stage_arrays(clips):
    clip = load_clip(clips["clean"])
    assert clip.frames.shape == (3 * FPS, HEIGHT, WIDTH, 3) and clip.frames.dtype.name == "uint8"
    assert clip.audio.dtype.name == "float32" and clip.audio.shape[1] == 1
    assert clip.sample_rate == 44100 and clip.fps == FPS
    assert abs(clip.audio.shape[0] / clip.sample_rate - 3.0) < 0.05


def test_clean_clip_is_auto_approved(clips):
    result = review_file(clips["clean"])
    assert result.review_status == "auto_approved", result.review_reasons
    assert result.black_frame_share == 0 and result.frozen_frame_share == 0
    assert result.silence_share == 0 and result.clipping_share == 0
    assert (result.width, result.height, result.fps, result.duration_s) == (WIDTH, HEIGHT, FPS, 3.0)
    assert result.speech_spans == [(0.0, pytest.approx(3.0, abs=0.05))]


def test_black_stretch_is_found(clips):
    result = review_file(clips["black"])
    assert result.black_frame_share == pytest.approx(1 / 3, abs=ONE_FRAME)
    assert result.frozen_frame_share == 0  # a black stretch is not also reported as frozen
    assert result.review_status == "needs_review"
    assert any("black" in reason for reason in result.review_reasons)


def test_frozen_stretch_is_found(clips):
    result = review_file(clips["frozen"])
    assert result.frozen_frame_share == pytest.approx(1 / 3, abs=ONE_FRAME)
    assert result.black_frame_share == 0
    # a third frozen is below the needs-review share (half); a stricter config flags it
    assert result.review_status == "auto_approved"
    clip = load_clip(clips["frozen"])
    strict = ReviewThresholds(max_frozen_share=0.2)
    flagged = decide_review(measure_clip(clip.frames, clip.audio, clip.sample_rate, clip.fps, EXPECTED, strict),
                            EXPECTED, strict)
    assert flagged.review_status == "needs_review"
    assert any("frozen" in reason for reason in flagged.review_reasons)


def test_silence_is_found_and_speech_spans_surround_it(clips):
    result = review_file(clips["silence"])
    assert result.silence_share == pytest.approx(1 / 3, abs=0.03)
    assert len(result.speech_spans) == 2
    (s0, e0), (s1, e1) = result.speech_spans
    assert s0 == pytest.approx(0.0, abs=0.03) and e0 == pytest.approx(1.0, abs=0.03)
    assert s1 == pytest.approx(2.0, abs=0.03) and e1 == pytest.approx(3.0, abs=0.05)


def test_silent_clip_with_dialogue_is_rejected(clips):
    with_dialogue = ReviewExpectation(
        duration_s=3, width=WIDTH, height=HEIGHT, dialogue=[{"speaker": "Ana", "line": "Hola"}]
    )
    result = review_file(clips["beep_with_flash"], with_dialogue)
    assert result.silence_share > 0.95
    assert result.review_status == "rejected"
    assert any("silent clip" in reason for reason in result.review_reasons)


def test_beep_200ms_after_flash_reads_plus_200ms(clips):
    result = review_file(clips["beep_200ms_after_flash"])
    assert result.av_offset_ms == pytest.approx(200, abs=40)
    assert result.av_offset_confidence >= 0.3
    assert any("offset +" in reason for reason in result.review_reasons)


def test_beep_before_flash_reads_negative(clips):
    result = review_file(clips["beep_120ms_before_flash"])
    assert result.av_offset_ms == pytest.approx(-120, abs=40)
    assert any("offset -" in reason for reason in result.review_reasons)


def test_beep_with_flash_reads_in_sync(clips):
    result = review_file(clips["beep_with_flash"])
    assert result.av_offset_ms == pytest.approx(0, abs=40)
    assert not any("offset" in reason for reason in result.review_reasons)


def test_wrong_duration_and_size_are_rejected(clips):
    result = review_file(clips["clean"], ReviewExpectation(duration_s=5, width=WIDTH, height=HEIGHT * 2))
    assert result.review_status == "rejected"
    assert any(reason.startswith("duration 3.00s") for reason in result.review_reasons)
    assert any(reason.startswith(f"size {WIDTH}x{HEIGHT}") for reason in result.review_reasons)


def test_clipping_is_found(tmp_path):
    # a tone driven to 1.5x full scale and hard-clipped: |sin| >= 2/3 on 1 - 2 asin(2/3)/pi = 53.5 % of samples.
    # 16-bit PCM keeps the flat tops that a lossy codec would ripple.
    clipped_tone = tone_audio("clip(1.5*sin(2*PI*220*t),-1,1)")
    path = make_clip(tmp_path / "clipped.mkv", moving_video(), clipped_tone, audio_codec="pcm_s16le")
    result = review_file(path)
    assert result.clipping_share == pytest.approx(1 - 2 * math.asin(2 / 3) / math.pi, abs=0.01)
    assert result.review_status == "needs_review"
    assert any("clipped" in reason for reason in result.review_reasons)
