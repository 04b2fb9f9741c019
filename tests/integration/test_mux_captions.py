"""Caption timing: dialogue lines spread over the review's speech spans (pure functions, no ffmpeg)."""

from __future__ import annotations

import pytest

from pipeline.mux import _vtt_time, caption_cues, write_vtt
from schemas.brief import DialogueLine


def lines(*texts: str) -> list[DialogueLine]:
    return [DialogueLine(speaker=f"S{i}", line=text) for i, text in enumerate(texts)]


def test_equal_lines_over_equal_spans_fill_one_span_each():
    cues = caption_cues(lines("aaaa", "bbbb"), [(0.5, 1.5), (2.0, 3.0)], duration_s=4.0)
    # the shared boundary falls exactly between the spans: the first cue ends with its span,
    # the second starts with the next one instead of covering the gap
    assert cues == [(0.5, 1.5, "S0: aaaa"), (2.0, 3.0, "S1: bbbb")]


def test_time_is_shared_in_proportion_to_line_length():
    cues = caption_cues(lines("a" * 10, "b" * 30), [(1.0, 3.0)], duration_s=5.0)
    assert [(round(s, 6), round(e, 6)) for s, e, _ in cues] == [(1.0, 1.5), (1.5, 3.0)]


def test_a_cue_may_run_across_a_gap_between_spans():
    cues = caption_cues(lines("a" * 30, "b" * 10), [(0.0, 1.0), (2.0, 3.0)], duration_s=3.0)
    (s0, e0, _), (s1, e1, _) = cues
    assert (s0, e0) == (0.0, pytest.approx(2.5))  # 1.5 s of speech time: all of span 1, half of span 2
    assert (s1, e1) == (pytest.approx(2.5), 3.0)


def test_spans_outside_the_clip_are_clipped_and_no_speech_means_whole_clip():
    assert caption_cues(lines("x"), [(-1.0, 0.5), (4.0, 9.0)], duration_s=2.0) == [(0.0, 0.5, "S0: x")]
    assert caption_cues(lines("x"), [(5.0, 6.0)], duration_s=2.0) == [(0.0, 2.0, "S0: x")]
    assert caption_cues([], [(0.0, 1.0)], duration_s=2.0) == []


def test_vtt_file_format(tmp_path):
    path = tmp_path / "c.vtt"
    write_vtt([(0.0, 1.25, "Ana: a --> b <i>"), (3725.5, 3725.5, "Bo: same instant")], path)
    assert path.read_text(encoding="utf-8") == (
        "WEBVTT\n\n"
        "1\n00:00:00.000 --> 00:00:01.250\nAna: a --&gt; b &lt;i&gt;\n\n"
        "2\n01:02:05.500 --> 01:02:05.501\nBo: same instant\n"
    )
    assert _vtt_time(59.9996) == "00:01:00.000"
