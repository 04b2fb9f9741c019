"""Every format the hosted model sells, rendered by the tiny model through the render stage:
the MP4s have the delivery sizes (ffprobe), and an `audio: false` brief delivers no audio. And the
stage's prompt prefetch: a call encodes its prompts while the model is busy with the call before,
and its own text phase then hits the replica's prompt cache."""

from __future__ import annotations

import json
import subprocess

import pyarrow as pa
import pytest
from conftest import require_tool

from model.generator import GeneratorConfig
from pipeline.expand import expand_brief
from pipeline.mux import CHANNEL_PROFILES
from pipeline.render import RenderClips
from pipeline.review import ReviewResult, ReviewThresholds
from schemas.brief import CampaignBrief
from schemas.formats import delivery_size
from schemas.render import RENDER_REQUEST_ARROW_SCHEMA


@pytest.fixture(scope="module")
def stage():
    return RenderClips(GeneratorConfig(model="tiny"), ReviewThresholds(), CHANNEL_PROFILES["draft"], batch_size=1)


def render(stage, **brief_fields) -> list[dict]:
    brief = CampaignBrief(brief_id="fmt", campaign_id="formats", prompt="A runner laces her shoes at dawn.",
                          source_locale="en-US", duration_s=2, **brief_fields)
    requests = expand_brief(brief, row_index=0, model_id="tiny")
    table = pa.Table.from_pylist([r.model_dump() for r in requests], schema=RENDER_REQUEST_ARROW_SCHEMA)
    return stage(table).to_pylist()


def probe(tmp_path, name: str, data: bytes) -> dict:
    path = tmp_path / name
    path.write_bytes(data)
    ffprobe = require_tool("/usr/bin/ffprobe", "the distribution's ffprobe")
    proc = subprocess.run([ffprobe, "-v", "error", "-show_entries", "stream=codec_type,width,height",
                           "-show_entries", "format=duration", "-of", "json", str(path)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


@pytest.mark.parametrize("resolution, aspect, size", [
    ("720p", "4:5", (720, 900)),
    ("1080p", "21:9", (2520, 1080)),
    ("540p", "3:4", (540, 720)),
])
def test_each_format_is_delivered_at_its_size(stage, tmp_path, resolution, aspect, size):
    assert delivery_size(resolution, aspect) == size
    (row,) = render(stage, resolution=resolution, aspect_ratios=[aspect])
    assert row["error"] is None, row["error"]
    probed = probe(tmp_path, "clip.mp4", dict(row["assets"])["mp4"])
    (video,) = [s for s in probed["streams"] if s["codec_type"] == "video"]
    assert (video["width"], video["height"]) == size
    assert float(probed["format"]["duration"]) == pytest.approx(2.0, abs=0.05)
    assert ReviewResult.model_validate_json(row["review_json"]).review_status != "rejected"


def test_a_silent_brief_delivers_no_audio_stream(stage, tmp_path):
    (row,) = render(stage, resolution="256p", audio=False)
    assert row["error"] is None, row["error"]
    assets = dict(row["assets"])
    assert "wav" not in assets and set(assets) == {"mp4", "jpg", "vtt"}
    probed = probe(tmp_path, "silent.mp4", assets["mp4"])
    assert [s["codec_type"] for s in probed["streams"]] == ["video"]
    review = ReviewResult.model_validate_json(row["review_json"])
    assert not any("audio" in reason or "loudness" in reason for reason in review.review_reasons)


def test_the_next_calls_prompts_are_encoded_while_the_model_is_busy_and_then_hit_the_cache(stage):
    import threading

    encoder = stage.generate.generator.text_encoder
    requests = [request for i, prompt in enumerate(("A kettle whistles in a quiet kitchen.", "Gulls over a pier."))
                for request in expand_brief(CampaignBrief(brief_id=f"prefetch{i}", campaign_id="formats", prompt=prompt,
                                                          source_locale="en-US", duration_s=2), row_index=i,
                                            model_id="tiny")]
    prompts = {r.prompt for r in requests}
    assert len(prompts) == 2
    prefetched, real_prepare = threading.Event(), stage.generate.prepare_text

    def prepare_then_say_so(batch):
        real_prepare(batch)
        prefetched.set()

    stage.generate.prepare_text = prepare_then_say_so
    table = pa.Table.from_pylist([r.model_dump() for r in requests], schema=RENDER_REQUEST_ARROW_SCHEMA)
    rows = []
    try:
        with stage.model_lock:  # the model is busy with the call before (its denoise holds the lock)
            call = threading.Thread(target=lambda: rows.extend(stage(table).to_pylist()))
            forwards, hits = encoder.forward_calls, encoder.hits
            call.start()
            assert prefetched.wait(120), "the call did not encode its prompts before taking the model"
            assert encoder.forward_calls == forwards + len(prompts) and call.is_alive()
        call.join(300)
    finally:
        stage.generate.prepare_text = real_prepare
    assert [r["error"] for r in rows] == [None, None]
    assert encoder.forward_calls == forwards + len(prompts)  # the text phase itself ran no encoder forward
    assert encoder.hits == hits + len(requests)
