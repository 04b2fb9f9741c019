"""mux_clip end to end with the real ffmpeg: decode what it wrote and check the deliverables."""

from __future__ import annotations

import re

import av
import numpy as np
import pytest
from synthetic_clips import top_level_boxes

from pipeline.media import FFmpegError, load_audio, run_ffmpeg
from pipeline.mux import CHANNEL_PROFILES, ChannelProfile, mux_clip, poster_frame_index
from pipeline.review import integrated_loudness


SR, FPS = 44100, 25.0
DIALOGUE = [
    {"speaker": "Ana", "line": "Hola, ¿qué tal?"},
    {"speaker": "Bo", "line": "Great <really> & more"},
    {"speaker": "Ana", "line": "Adiós"},
]


def moving_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """A gradient that scrolls one pixel per frame."""
    x = np.arange(width)[None, None, :] + np.arange(num_frames)[:, None, None]
    y = np.arange(height)[None, :, None]
    luma = ((x * 4 + y * 2) % 256).astype(np.uint8)
    return np.repeat(luma[..., None], 3, axis=-1)


def speechlike_tone(seconds: float, amplitude: float, channels: int = 2) -> np.ndarray:
    """A 440 Hz tone with a 1.5 Hz swell: a loudness range above zero, so loudnorm can stay linear."""
    t = np.arange(round(seconds * SR)) / SR
    mono = amplitude * np.sin(2 * np.pi * 440 * t) * (1 + 0.5 * np.sin(2 * np.pi * 1.5 * t))
    return np.repeat(mono[:, None], channels, axis=1).astype(np.float32)


def parse_vtt(text: str) -> list[tuple[float, float, str]]:
    def seconds(stamp: str) -> float:
        h, m, s = stamp.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    assert text.startswith("WEBVTT\n")
    cues = []
    for block in text.strip().split("\n\n")[1:]:
        lines = block.split("\n")
        match = re.fullmatch(r"(\d\d:\d\d:\d\d\.\d\d\d) --> (\d\d:\d\d:\d\d\.\d\d\d)", lines[1])
        assert match, f"bad timing line {lines[1]!r}"
        cues.append((seconds(match[1]), seconds(match[2]), "\n".join(lines[2:])))
    return cues


def ffmpeg_integrated_lufs(path) -> float:
    log = run_ffmpeg(["-i", str(path), "-map", "0:a", "-af", "ebur128", "-f", "null", "-"])
    return float(re.findall(r"I:\s+(-?[\d.]+) LUFS", log)[-1])


@pytest.fixture(scope="module")
def muxed(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("mux")
    frames = moving_frames(76, 48, 64)  # 3.04 s at 25 fps, as the model makes them (25 * 3 + 1)
    audio = speechlike_tone(3.04, amplitude=0.02)  # about -33 LUFS, far below the -14 target
    spans = [(0.3, 1.2), (1.6, 2.9)]
    assets = mux_clip(frames, audio, SR, FPS, out_dir, "render-abc123", DIALOGUE, spans)
    return frames, audio, spans, assets


def test_mp4_is_h264_yuv420p_with_aac_48k_and_faststart(muxed):
    frames, _, _, assets = muxed
    assert assets.mp4_path.name == "render-abc123.mp4"
    with av.open(str(assets.mp4_path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264"
        assert video.codec_context.pix_fmt == "yuv420p"
        assert (video.codec_context.width, video.codec_context.height) == (64, 48)
        assert audio.codec_context.name == "aac" and audio.rate == 48000 and audio.channels == 2
        decoded = list(container.decode(video))
        assert float(container.duration / av.time_base) == pytest.approx(3.04, abs=0.06)
    assert len(decoded) == frames.shape[0]
    # the middle frame survives the round trip (H.264 at CRF 18 on a smooth gradient)
    middle = decoded[38].to_ndarray(format="rgb24").astype(int)
    assert np.abs(middle - frames[38]).mean() < 6
    boxes = top_level_boxes(assets.mp4_path)
    assert boxes.index("moov") < boxes.index("mdat"), boxes


def test_loudness_is_normalized_to_the_profile(muxed):
    _, audio, _, assets = muxed
    assert integrated_loudness(audio, SR) == pytest.approx(-33, abs=1.5)
    assert assets.loudnorm_input_lufs == pytest.approx(integrated_loudness(audio, SR), abs=0.5)
    assert assets.loudnorm_mode == "linear"
    assert assets.output_lufs == pytest.approx(-14.0, abs=1.0)
    assert ffmpeg_integrated_lufs(assets.mp4_path) == pytest.approx(-14.0, abs=1.0)
    assert assets.output_true_peak_dbtp <= -1.0 + 0.5  # AAC may overshoot the ceiling a little


def test_wav_stem_is_48k_24bit_and_normalized(muxed):
    _, _, _, assets = muxed
    assert assets.wav_path.read_bytes()[:4] == b"RIFF"
    with av.open(str(assets.wav_path)) as container:
        stream = container.streams.audio[0]
        assert (stream.codec_context.name, stream.rate, stream.channels) == ("pcm_s24le", 48000, 2)
    stem, rate = load_audio(assets.wav_path)
    assert stem.shape[0] / rate == pytest.approx(3.04, abs=0.01)
    assert integrated_loudness(stem, rate) == pytest.approx(-14.0, abs=0.5)


def test_poster_is_a_jpeg_of_a_frame(muxed):
    frames, _, _, assets = muxed
    with av.open(str(assets.poster_path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "mjpeg"
        poster = next(container.decode(stream)).to_ndarray(format="rgb24").astype(int)
    chosen = frames[poster_frame_index(frames)]
    assert poster.shape == chosen.shape
    assert np.abs(poster - chosen).mean() < 6


def test_captions_cover_the_speech_in_dialogue_order(muxed):
    _, _, spans, assets = muxed
    cues = parse_vtt(assets.vtt_path.read_text(encoding="utf-8"))
    assert [text for *_, text in cues] == [
        "Ana: Hola, ¿qué tal?",
        "Bo: Great &lt;really&gt; &amp; more",
        "Ana: Adiós",
    ]
    starts, ends = [s for s, _, _ in cues], [e for _, e, _ in cues]
    assert starts[0] == pytest.approx(spans[0][0], abs=0.001)
    assert ends[-1] == pytest.approx(spans[-1][1], abs=0.001)
    assert all(s < e for s, e in zip(starts, ends))
    assert all(e <= s for e, s in zip(ends[:-1], starts[1:]))
    # the longest line gets the longest cue
    durations = [e - s for s, e in zip(starts, ends)]
    assert max(range(3), key=durations.__getitem__) == 1


def test_broadcast_profile_and_odd_size(tmp_path):
    frames = moving_frames(51, 47, 63)
    audio = speechlike_tone(2.04, amplitude=0.3, channels=1)  # about -9 LUFS: loudnorm must turn it down
    assets = mux_clip(frames, audio, SR, FPS, tmp_path, "odd", DIALOGUE[:1], [], CHANNEL_PROFILES["broadcast"])
    assert (assets.width, assets.height) == (62, 46)
    with av.open(str(assets.mp4_path)) as container:
        ctx = container.streams.video[0].codec_context
        assert (ctx.width, ctx.height) == (62, 46)
    assert assets.output_lufs == pytest.approx(-23.0, abs=1.0)
    # no speech found: the single cue spans the whole clip
    assert parse_vtt(assets.vtt_path.read_text(encoding="utf-8")) == [(0.0, 2.04, "Ana: Hola, ¿qué tal?")]


def test_silent_audio_is_muxed_without_normalization(tmp_path):
    assets = mux_clip(moving_frames(51, 48, 64), np.zeros((90000, 2), np.float32), SR, FPS, tmp_path, "quiet")
    assert assets.loudnorm_mode == "none" and assets.loudnorm_input_lufs is None
    assert assets.output_lufs is None
    assert parse_vtt(assets.vtt_path.read_text(encoding="utf-8")) == []


def test_bad_inputs_name_the_problem(tmp_path):
    frames = moving_frames(26, 48, 64)
    with pytest.raises(ValueError, match="stem_name"):
        mux_clip(frames, speechlike_tone(1.04, 0.1), SR, FPS, tmp_path, "../escape")
    with pytest.raises(ValueError, match=r"frames must be uint8"):
        mux_clip(frames.astype(np.float32), speechlike_tone(1.04, 0.1), SR, FPS, tmp_path, "x")
    with pytest.raises(ValueError, match=r"audio must be non-empty"):
        mux_clip(frames, np.zeros((0, 2), np.float32), SR, FPS, tmp_path, "x")


def test_a_failed_encode_leaves_no_partial_files(tmp_path):
    broken = ChannelProfile(video_preset="no-such-preset")
    with pytest.raises(FFmpegError, match="encoding .*bad.mp4"):
        mux_clip(moving_frames(26, 48, 64), speechlike_tone(1.04, 0.1), SR, FPS, tmp_path, "bad", profile=broken)
    assert list(tmp_path.iterdir()) == []


def test_a_silent_delivery_has_no_audio_track_and_no_stem(tmp_path):
    assets = mux_clip(moving_frames(51, 48, 64), None, SR, FPS, tmp_path, "silent", DIALOGUE[:1],
                      profile=CHANNEL_PROFILES["draft"])
    assert assets.wav_path is None and not (tmp_path / "silent.wav").exists()
    assert assets.output_lufs is None and assets.loudnorm_mode == "none"
    with av.open(str(assets.mp4_path)) as container:
        assert not container.streams.audio and container.streams.video[0].codec_context.name == "h264"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["silent.jpg", "silent.mp4", "silent.vtt"]
