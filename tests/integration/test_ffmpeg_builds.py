"""Render, review and mux on every ffmpeg a deployment may have; a hung ffmpeg ends as a failure row.

The builds: imageio-ffmpeg's bundled one, the distribution's (Debian's apt
package; .ci/run installs it) and 4.2.2 (imageio-ffmpeg 0.5.1's, standing for
Ubuntu 20.04/22.04's 4.x; the Makefile installs it in its own folder). Each is
used by path through PADDOCK_FFMPEG; PATH stays as it is. Files are checked
with the distribution's ffprobe.
"""

from __future__ import annotations

import json
import subprocess
import time

import pyarrow as pa
import pytest
from conftest import ffmpeg_builds, require_tool
from synthetic_clips import top_level_boxes

from model.generator import AVGenerator, ClipSpec, GeneratorConfig
from pipeline.media import load_audio, FFMPEG_ENV, TIMEOUT_SCALE_ENV, check_ffmpeg, ffmpeg_exe
from pipeline.mux import CHANNEL_PROFILES, mux_clip
from pipeline.review import ReviewExpectation, integrated_loudness, measure_clip
from pipeline.render import RenderClips
from pipeline.review import ReviewThresholds
from pipeline.expand import expand_brief
from schemas.brief import CampaignBrief
from schemas.render import RENDER_REQUEST_ARROW_SCHEMA

DURATION_S = 2


@pytest.fixture(scope="module")
def clip():
    generator = AVGenerator(GeneratorConfig(model="tiny"))
    (out,) = generator.generate([ClipSpec("A chef tastes the soup and smiles.", DURATION_S, "16:9", "256p", seed=5)])
    return out


def ffprobe(path) -> dict:
    probe = require_tool("/usr/bin/ffprobe", "the distribution's ffprobe")
    proc = subprocess.run(
        [probe, "-v", "error", "-show_entries", "stream=codec_type,codec_name,width,height,pix_fmt,sample_rate",
         "-show_entries", "format=duration,format_name", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(proc.stdout)


@pytest.mark.parametrize("build", ["bundled", "distribution", "4.2"])
def test_render_review_mux_on_each_build(build, clip, tmp_path, monkeypatch):
    exe = require_tool(ffmpeg_builds()[build], f"the {build} ffmpeg")
    monkeypatch.setenv(FFMPEG_ENV, exe)
    assert ffmpeg_exe() == exe
    info = check_ffmpeg()
    assert info.ok, info.problem()

    review = measure_clip(clip.frames, clip.audio, clip.sample_rate, clip.fps,
                         ReviewExpectation(duration_s=DURATION_S, width=clip.frames.shape[2], height=clip.frames.shape[1]))
    assets = mux_clip(clip.frames, clip.audio, clip.sample_rate, clip.fps, tmp_path, f"clip-{build.replace('.', '')}",
                      dialogue=[{"speaker": "Chef", "line": "Perfect."}], speech_spans=review.speech_spans,
                      profile=CHANNEL_PROFILES["draft"])

    probed = ffprobe(assets.mp4_path)
    streams = {s["codec_type"]: s for s in probed["streams"]}
    assert streams["video"]["codec_name"] == "h264" and streams["video"]["pix_fmt"] == "yuv420p"
    height, width = clip.frames.shape[1:3]
    assert (streams["video"]["width"], streams["video"]["height"]) == (width - width % 2, height - height % 2)
    assert streams["audio"]["codec_name"] == "aac" and streams["audio"]["sample_rate"] == "48000"
    assert float(probed["format"]["duration"]) == pytest.approx(clip.frames.shape[0] / clip.fps, abs=0.05)
    boxes = top_level_boxes(assets.mp4_path)
    assert boxes.index("moov") < boxes.index("mdat"), f"not faststart: {boxes}"
    wav = ffprobe(assets.wav_path)["streams"][0]
    assert (wav["codec_name"], wav["sample_rate"]) == ("pcm_s24le", "48000")
    assert ffprobe(assets.poster_path)["streams"][0]["codec_name"] == "mjpeg"
    target = CHANNEL_PROFILES["draft"].integrated_lufs
    stem, rate = load_audio(assets.wav_path)
    assert stem.shape[0] == round(clip.audio.shape[0] * 48000 / clip.sample_rate)
    assert integrated_loudness(stem, rate) == pytest.approx(target, abs=0.5)
    # the tiny model's audio is near white noise: 4.2's native AAC encoder cuts more of its top band
    assert assets.output_lufs == pytest.approx(target, abs=2.0)


def _hanging_ffmpeg(tmp_path, real: str) -> str:
    """An ffmpeg that answers the capability probe like the real one and hangs on its first H.264 encode."""
    stub = tmp_path / "ffmpeg"
    hung_once = tmp_path / "hung-once"
    stub.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" libx264 "*) if [ ! -e "{hung_once}" ]; then touch "{hung_once}"; exec sleep 600; fi;; esac\n'
        f'exec "{real}" "$@"\n'
    )
    stub.chmod(0o755)
    return str(stub)


def test_a_hung_ffmpeg_becomes_a_failure_row_and_the_stage_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv(FFMPEG_ENV, _hanging_ffmpeg(tmp_path, ffmpeg_builds()["bundled"]))
    monkeypatch.setenv(TIMEOUT_SCALE_ENV, "0.15")  # 0.15 x (30 s + 8 s per clip second): 6.9 s for a 2 s clip
    stage = RenderClips(GeneratorConfig(model="tiny"), ReviewThresholds(), CHANNEL_PROFILES["draft"], batch_size=2)
    brief = CampaignBrief(brief_id="b", campaign_id="c", prompt="A chef tastes the soup.", source_locale="en-US",
                          duration_s=DURATION_S, resolution="256p", takes=2)
    requests = expand_brief(brief, row_index=0, model_id="tiny")
    table = pa.Table.from_pylist([r.model_dump() for r in requests], schema=RENDER_REQUEST_ARROW_SCHEMA)
    started = time.perf_counter()
    rows = stage(table).to_pylist()
    elapsed = time.perf_counter() - started
    assert elapsed < 120, f"the stage took {elapsed:.0f} s"
    hung, fine = rows
    assert hung["error"] and "timed out" in hung["error"] and "encoding" in hung["error"], hung["error"]
    assert fine["error"] is None and dict(fine["assets"])["mp4"][4:8] == b"ftyp"
