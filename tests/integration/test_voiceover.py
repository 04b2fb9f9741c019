"""Voice-over driven renders: plan-time rejects on real files, the audio-driven model path on the
tiny stack, and a campaign whose voice-over locale delivers the recording itself."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from chat_server import chat_server
from voiceover_files import CODECS, speech_like, write_recording

from model.generator import AVGenerator, ClipSpec, GeneratorConfig
from model.magihuman.audio_vae import AudioVAE, resample
from pipeline.enhance import PromptLLMConfig
from pipeline.ingest import ValidateBriefs
from pipeline.media import load_audio
from pipeline.run import CampaignConfig, run_campaign
from schemas.brief import BRIEF_ARROW_SCHEMA


def brief_row(voiceovers, locales=("en-US", "de-DE"), **extra):
    return {"row_index": 0, "brief_id": "spot", "campaign_id": "vo", "prompt": "A woman speaks to the camera.",
            "source_locale": "en-US", "locales": list(locales),
            "dialogue": [{"speaker": "Ana", "line": "Spring tastes better."}],
            "localized_dialogue": [{"locale": "de-DE", "lines": [{"speaker": "Ana", "line": "Frühling!"}]}],
            "duration_s": 2, "resolution": "256p", "seed": 5, "voiceovers": voiceovers, **extra}


def validate(row):
    results = ValidateBriefs({"spot": 0}).validate_row(row)
    return [r for r in results if r["brief_json"]], [(r["locale"], r["reason"]) for r in results if r["reason"]]


@pytest.mark.parametrize("codec", list(CODECS))
def test_each_file_form_is_read_with_its_digest_and_frames(tmp_path, codec):
    path = write_recording(tmp_path, "vo", speech_like(7.4), codec)
    valid, rejects = validate(brief_row([{"locale": "en-US", "uri": str(path)}]))
    assert rejects == []
    (probed,) = json.loads(valid[0]["voiceovers_json"]).values()
    assert probed["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert abs(probed["seconds"] - 7.4) < 0.06  # MP3 adds its encoder's priming
    assert probed["frames"] == round(probed["seconds"] * 25)


def test_rejects_name_the_field(tmp_path):
    good = write_recording(tmp_path, "good", speech_like(3.0))
    silent = write_recording(tmp_path, "silent", np.zeros((48000 * 3, 1), np.float32))
    long = write_recording(tmp_path, "long", speech_like(15.5))
    short = write_recording(tmp_path, "short", speech_like(1.5))
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF not really a wave file" * 10)
    cases = {
        str(silent): "voiceovers[0].uri: the recording is silent",
        str(long): "voiceovers[0].uri: the recording lasts 15.50 s",
        str(short): "voiceovers[0].uri: the recording lasts 1.50 s",
        str(garbage): "voiceovers[0].uri: not a readable WAV, FLAC or MP3 file",
        str(tmp_path / "missing.wav"): "voiceovers[0].uri: no file at",
        "takes/vo.wav": "voiceovers[0].uri: a relative path",
    }
    for uri, reason in cases.items():
        valid, rejects = validate(brief_row([{"locale": "de-DE", "uri": uri}]))
        # that locale alone is rejected; the other renders as before
        assert [(loc, r[:len(reason)]) for loc, r in rejects] == [("de-DE", reason)], uri
        assert json.loads(valid[0]["brief_json"])["locales"] == ["en-US"]
    _, rejects = validate(brief_row([{"locale": "fr-FR", "uri": str(good)}]))
    assert rejects == [(None, "voiceovers[0].locale: fr-FR is not one of the brief's locales (de-DE, en-US); "
                              "add it to locales or fix the tag")]


def test_windowed_encoding_matches_the_reference_merge():
    vae = AudioVAE.tiny()
    recording = torch.from_numpy(speech_like(3.0, rate=51200)[:, 0])
    whole = vae.encode(recording[:, None], 51200)
    assert whole.shape == (75, 64)
    windowed = vae.encode(recording[:, None], 51200, window_s=1.0)
    assert windowed.shape == (75, 64)
    # the first window's own latents (before the second window starts) are its encoding alone
    first = vae.encode(recording[:51200, None], 51200)
    assert torch.allclose(windowed[:12], first[:12], atol=1e-5)
    assert not torch.allclose(windowed, whole, atol=1e-3)  # windows see less context: the path really ran


@pytest.mark.parametrize("resolution", ["256p", "540p"])
def test_audio_latent_is_held_fixed_in_base_and_sr(resolution):
    generator = AVGenerator(GeneratorConfig(model="tiny", return_latents=True))
    audio = speech_like(2.0)
    spec = ClipSpec(prompt="A woman speaks.", duration_s=2.0, resolution=resolution, seed=4, audio=audio,
                    audio_rate=48000)
    (clip,) = generator.generate([spec])
    # the encoded recording, drawn after the clip's noise from its own generator, left as it was
    noise_first = torch.Generator().manual_seed(4)
    torch.randn((51, 64), generator=noise_first)
    torch.randn((48, 13, 4, 8), generator=noise_first)
    expected = generator.audio_vae.encode(audio, 48000, 51, noise_first)
    assert torch.allclose(clip.latents.audio, expected, atol=1e-6)
    (free,) = generator.generate([ClipSpec(prompt="A woman speaks.", duration_s=2.0, resolution=resolution, seed=4)])
    assert not torch.allclose(free.latents.video, clip.latents.video)  # the video follows the audio


@pytest.mark.slow  # a campaign run twice, with recordings in three forms
def test_campaign_delivers_the_recording_and_other_locales_as_before(ray_session, tmp_path):
    recording = speech_like(3.4)
    path = write_recording(tmp_path, "ana-en", recording, "wav24")
    rows = [{k: v for k, v in brief_row([{"locale": "en-US", "uri": str(path)}]).items() if k != "row_index"},
            {"brief_id": "odd", "campaign_id": "vo", "prompt": "MALFORMED please. A bottle on slate.",
             "source_locale": "en-US", "duration_s": 2, "resolution": "256p"}]
    pq.write_table(pa.Table.from_pylist(rows, schema=BRIEF_ARROW_SCHEMA), tmp_path / "briefs.parquet")
    with chat_server() as (llm, url):
        config = CampaignConfig(briefs=str(tmp_path / "briefs.parquet"), dam=str(tmp_path / "dam"),
                                workdir=tmp_path / "work", model="tiny", device="cpu", profile="draft",
                                prompt_llm=PromptLLMConfig(url=url, model="prompt-writer", backoff_s=0.01))
        llm.fail_next = 1  # the first call meets a 503 and is retried
        result = run_campaign(config, log=lambda line: None)
        rows_by = {(r.brief_id, r.locale): r for r in result.manifest}
        assert [r.status for r in result.manifest] == ["done"] * 3, [r.error for r in result.manifest]

        en, de = rows_by[("spot", "en-US")], rows_by[("spot", "de-DE")]
        assert en.review_duration_s == pytest.approx(3.4)  # 85 whole frames: as long as the recording
        assert de.review_duration_s == pytest.approx(2.0)
        assert en.review_voiceover_correlation > 0.95 and en.review_status != "rejected", en.review_reasons
        stem, rate = load_audio(tmp_path / "dam" / en.keys["wav"])
        supplied = resample(torch.from_numpy(recording.T.copy()), 48000, rate).T.numpy()[:, 0]
        mono = stem.mean(axis=1)[: supplied.size]
        assert abs(stem.shape[0] / rate - 3.4) < 0.01
        assert np.corrcoef(mono, supplied[: mono.size])[0, 1] > 0.95  # the recording itself, loudness-normalized
        assert en.review_av_offset_confidence is not None  # the offset is still measured
        vtt = (tmp_path / "dam" / en.keys["vtt"]).read_text()
        assert "Spring tastes better." in vtt

        # the prompt LLM wrote the prompts, except where its answer broke the form
        assert en.prompt_source == de.prompt_source == "llm"
        assert '"Spring tastes better."' in en.model_prompt and "Dialogue:\n<Woman in linen shirt" in en.model_prompt
        odd = rows_by[("odd", "en-US")]
        assert odd.prompt_source.startswith("template (fallback: answer rejected: 1 paragraphs")
        assert odd.model_prompt.startswith("MALFORMED please. A bottle on slate.\n\nBackground Sound:")
        calls = llm.calls
        assert calls == 4  # three distinct prompts, one of them retried once

        again = run_campaign(config, log=lambda line: None)
        assert [r.status for r in again.manifest] == ["skipped"] * 3
        assert llm.calls == calls  # the re-run asks the endpoint nothing
        assert {r.render_id: r.prompt_source for r in again.manifest} == {
            r.render_id: r.prompt_source for r in result.manifest}
    lineage = (tmp_path / "work" / "lineage.jsonl").read_text()
    assert "prompt-llm/prompt-writer" in lineage
