"""The whole generator stack on the tiny preset (random weights, real architecture), on the CPU."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from released_checkpoints import write_stable_audio_root, write_wan_original

from conftest import write_turbo_vae_folder
from model.generator import AVGenerator, ClipSpec, GeneratorConfig, load_reference_image
from model.magihuman import save_checkpoint
from model.magihuman.turbo_vae import TurboVAED
from model.magihuman.video_vae import VideoVAE, fit_frames
from model.magihuman.sizes import FINAL_SIZES
from model.presets import PRESETS


@pytest.fixture(scope="module")
def generator():
    return AVGenerator(GeneratorConfig(model="tiny", return_latents=True))


def _check_clip(out, duration_s, aspect, resolution, sample_rate=44100):
    width, height = FINAL_SIZES[resolution][aspect]
    # exactly the requested duration: s x 25 frames and s seconds of audio
    assert out.frames.shape == (duration_s * 25, height, width, 3) and out.frames.dtype == np.uint8
    assert out.fps == 25 and out.sample_rate == sample_rate
    assert out.audio.dtype == np.float32 and out.audio.ndim == 2 and out.audio.shape[1] == 2
    assert out.audio.shape[0] == duration_s * sample_rate
    assert np.isfinite(out.audio).all() and out.audio.std() > 0
    assert out.frames.std() > 0
    assert set(out.timings) == {"text", "denoise", "super_resolution", "decode"}
    assert all(v >= 0 for v in out.timings.values()) and out.timings["denoise"] > 0


@pytest.mark.parametrize("aspect", ["16:9", "9:16", "1:1"])
def test_base_clip_shapes_per_aspect(generator, aspect):
    (out,) = generator.generate([ClipSpec("A chef tastes the soup and smiles.", 2, aspect, "256p", seed=3)])
    _check_clip(out, 2, aspect, "256p")
    assert out.timings["super_resolution"] == 0


@pytest.mark.parametrize("seconds, frame_fit", [(5, "exact"), (4, "dropped_1"), (2, "held_1"), (3, "held_2")])
def test_clip_is_exactly_the_requested_duration(generator, seconds, frame_fit):
    (out,) = generator.generate([ClipSpec("A runner crosses the line.", seconds, "16:9", "256p", seed=5)])
    _check_clip(out, seconds, "16:9", "256p")
    assert out.frame_fit == frame_fit
    # the reference's latent layout: (25 s + 1 - 1) // 4 + 1 video latent frames, 25 s + 1 audio latents
    assert out.latents.video.shape[1] == seconds * 25 // 4 + 1
    assert out.latents.audio.shape[0] == seconds * 25 + 1
    held = {"held_1": 1, "held_2": 2}.get(frame_fit, 0)
    for i in range(held):  # a held frame repeats the last decoded one
        assert np.array_equal(out.frames[-1 - i], out.frames[-1 - held])


@pytest.mark.parametrize("resolution,aspect", [("540p", "9:16"), ("1080p", "16:9")])
def test_super_resolution_clip(generator, resolution, aspect):
    (out,) = generator.generate([ClipSpec("A cyclist waves.", 1, aspect, resolution, seed=11)])
    _check_clip(out, 1, aspect, resolution)
    assert out.timings["super_resolution"] > 0
    sr_w, sr_h = PRESETS["tiny"].sr_sizes[resolution][aspect]
    assert out.latents.video.shape[-2:] == (sr_h // 16, sr_w // 16)


def test_tiny_clip_renders_through_turbo_vae_and_the_full_decoder_stays_selectable(generator):
    assert isinstance(generator.video_decoder, TurboVAED)
    spec = ClipSpec("A kite over the beach.", 1, "16:9", "256p", seed=4)
    (out,) = generator.generate([spec])
    _check_clip(out, 1, "16:9", "256p")
    decoded = generator.video_decoder.decode(out.latents.video[None])[0, :26]
    assert np.array_equal(out.frames, fit_frames(decoded, *FINAL_SIZES["256p"]["16:9"]).numpy())

    full = AVGenerator(GeneratorConfig(model="tiny", decoder="full", return_latents=True))
    assert isinstance(full.video_decoder, VideoVAE) and full.video_decoder is full.video_vae
    (out_full,) = full.generate([spec])
    _check_clip(out_full, 1, "16:9", "256p")
    torch.testing.assert_close(out_full.latents.video, out.latents.video)  # same DiT and noise
    assert not np.array_equal(out_full.frames, out.frames)  # another decoder


def test_decoder_choice_for_a_released_stack(tmp_path):
    auto = GeneratorConfig(model="magihuman-distill", checkpoint_dir=tmp_path, sr_resolutions=())
    assert auto.video_decoder() == "full"
    (tmp_path / "turbo_vae").mkdir()
    assert auto.video_decoder() == "turbo"
    assert auto.model_copy(update={"decoder": "full"}).video_decoder() == "full"
    with pytest.raises(FileNotFoundError) as err:
        auto.released_paths()  # the DiT and the rest are missing, turbo_vae/ is there
    assert "dit:" in str(err.value) and "turbo_vae:" not in str(err.value)
    (tmp_path / "turbo_vae").rmdir()
    with pytest.raises(FileNotFoundError) as err:
        auto.model_copy(update={"decoder": "turbo"}).released_paths()
    assert f"turbo_vae: {tmp_path / 'turbo_vae'}" in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        auto.released_paths()
    assert "turbo_vae" not in str(err.value)
    with pytest.raises(ValidationError, match="decoder"):
        GeneratorConfig(decoder="fast")


def test_float16_is_refused_naming_the_field_and_the_fix():
    with pytest.raises(ValidationError, match=r"dtype='float16' is refused.*set dtype to 'bfloat16'"):
        GeneratorConfig(dtype="float16")
    assert GeneratorConfig(dtype="bfloat16").torch_dtype() == torch.bfloat16


def test_same_seed_same_clip_other_seed_differs(generator):
    spec = ClipSpec("Rain on a window.", 2, "1:1", "256p", seed=42)
    a, b = generator.generate([spec]), generator.generate([spec])
    assert np.array_equal(a[0].frames, b[0].frames) and np.array_equal(a[0].audio, b[0].audio)
    (c,) = generator.generate([ClipSpec("Rain on a window.", 2, "1:1", "256p", seed=43)])
    assert not np.array_equal(a[0].frames, c.frames)


def test_batching_keeps_each_sample(generator):
    a = ClipSpec("A dog barks at the mailman.", 2, "16:9", "256p", seed=1)
    b = ClipSpec("A violinist plays on a rooftop at dusk.", 2, "16:9", "256p", seed=2)
    c = ClipSpec("Different shape.", 2, "9:16", "256p", seed=3)
    batch = generator.generate([a, c, b])
    assert [o.frames.shape[1:3] for o in batch] == [(256, 448), (448, 256), (256, 448)]
    alone = generator.generate([a])[0]
    # Same noise and steps; a batched matmul may round differently in the last float bit.
    torch.testing.assert_close(batch[0].latents.video, alone.latents.video, atol=1e-5, rtol=0)
    assert np.abs(batch[0].frames.astype(int) - alone.frames).max() <= 1
    assert np.abs(batch[0].frames.astype(int) - batch[2].frames).mean() > 5


def test_text_cache_hits_on_repeated_prompts():
    gen = AVGenerator(GeneratorConfig(model="tiny", steps=1))
    prompt = "A barista pours latte art."
    gen.generate([ClipSpec(prompt, 1, "16:9", seed=1), ClipSpec(prompt, 1, "16:9", seed=2)])
    gen.generate([ClipSpec(prompt, 1, "1:1", seed=3)])
    info = gen.text_encoder.cache_info()
    assert info["misses"] == 1 and info["hits"] == 2
    assert gen.text_encoder.forward_calls == 1


def test_base_mode_computes_the_null_prompt_once(monkeypatch):
    monkeypatch.setitem(PRESETS, "tiny", dataclasses.replace(PRESETS["tiny"], mode="base"))
    gen = AVGenerator(GeneratorConfig(model="tiny", steps=2))
    gen.generate([ClipSpec("one", 1, "16:9", seed=1)])
    gen.generate([ClipSpec("two", 1, "16:9", seed=1)])
    # two prompts + one negative prompt, however many clips
    assert gen.text_encoder.forward_calls == 3


def test_a_brief_negative_prompt_replaces_the_default_in_cfg(monkeypatch):
    monkeypatch.setitem(PRESETS, "tiny", dataclasses.replace(PRESETS["tiny"], mode="base"))
    gen = AVGenerator(GeneratorConfig(model="tiny", steps=2, return_latents=True))
    default, custom = gen.generate([ClipSpec("a chef", 1, "16:9", seed=4),
                                    ClipSpec("a chef", 1, "16:9", seed=4, negative_prompt="cartoon, blurry")])
    # prompt, default negative, custom negative: three encodes; the custom one steers CFG elsewhere
    assert gen.text_encoder.forward_calls == 3
    assert (default.latents.video - custom.latents.video).abs().max() > 1e-2
    (again,) = gen.generate([ClipSpec("a chef", 1, "16:9", seed=4)])  # alone: batching changes only rounding
    assert torch.allclose(default.latents.video, again.latents.video, atol=1e-4)


def test_image_to_video_pins_the_first_latent_frame(generator, tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
    path = tmp_path / "ref.png"
    Image.fromarray(image).save(path)
    assert np.array_equal(np.asarray(load_reference_image(f"file://{path}")), image)

    spec = ClipSpec("A woman turns to the camera.", 1, "16:9", "256p", seed=9, reference_image=str(path))
    (out,) = generator.generate([spec])
    _check_clip(out, 1, "16:9", "256p")
    expected = generator.video_vae.encode_image(Image.fromarray(image), *PRESETS["tiny"].base_sizes["16:9"])
    torch.testing.assert_close(out.latents.image_condition, expected[0])
    assert torch.equal(out.latents.video[:, :1], out.latents.image_condition)
    (t2v,) = generator.generate([ClipSpec("A woman turns to the camera.", 1, "16:9", "256p", seed=9)])
    assert not torch.equal(t2v.latents.video[:, :1], out.latents.image_condition)


def _first_frame_latent(generator, reference_image):
    spec = ClipSpec("A woman turns to the camera.", 1, "9:16", "256p", seed=4, reference_image=reference_image)
    (out,) = generator.generate([spec])
    return out.latents.image_condition


def test_exif_rotated_jpeg_gives_the_latent_of_the_upright_image(generator, tmp_path):
    upright = np.random.default_rng(2).integers(0, 256, (160, 96, 3), dtype=np.uint8)  # portrait, 9:16-ish
    # A camera stores the pixels as the sensor saw them (landscape) and says how to turn them:
    # Orientation 6 = rotate 90 degrees clockwise to display.
    stored = Image.fromarray(np.rot90(upright, k=1).copy())
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated_path = tmp_path / "phone.jpg"
    stored.save(rotated_path, quality=95, exif=exif)
    # The upright image is what those JPEG pixels show once turned: saved losslessly.
    with Image.open(rotated_path) as img:
        assert img.getexif()[0x0112] == 6 and img.size == (160, 96)
        shown = np.rot90(np.asarray(img), k=-1).copy()
    assert shown.shape == upright.shape
    upright_path = tmp_path / "upright.png"
    Image.fromarray(shown).save(upright_path)

    from_exif = _first_frame_latent(generator, str(rotated_path))
    torch.testing.assert_close(from_exif, _first_frame_latent(generator, str(upright_path)), atol=0, rtol=0)
    # Read without its orientation, the same file is a different (sideways) picture.
    sideways_path = tmp_path / "sideways.png"
    Image.fromarray(np.rot90(shown, k=1).copy()).save(sideways_path)
    assert not torch.allclose(from_exif, _first_frame_latent(generator, str(sideways_path)))


def test_s3_reference_image_is_fetched_from_the_configured_endpoint(generator, tmp_path, monkeypatch):
    import io

    import boto3
    from s3_server import S3_TEST_ENV, start_s3_server

    for name, value in S3_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    image = np.random.default_rng(3).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    body = io.BytesIO()
    Image.fromarray(image).save(body, format="PNG")
    with start_s3_server() as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="brand-assets")
        s3.put_object(Bucket="brand-assets", Key="refs/hero.png", Body=body.getvalue())
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # boto3's own setting
        assert np.array_equal(np.asarray(load_reference_image("s3://brand-assets/refs/hero.png")), image)
        monkeypatch.delenv("AWS_ENDPOINT_URL")
        fetched = load_reference_image("s3://brand-assets/refs/hero.png", s3_endpoint=endpoint)
        assert np.array_equal(np.asarray(fetched), image)
        with pytest.raises(FileNotFoundError, match="s3://brand-assets/refs/missing.png"):
            load_reference_image("s3://brand-assets/refs/missing.png", s3_endpoint=endpoint)


def test_reference_image_errors_name_the_input(generator, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        generator.generate([ClipSpec("x", 1, reference_image=str(tmp_path / "nope.png"))])
    with pytest.raises(ValueError, match="https://"):
        load_reference_image("https://cdn.example/key.png")


def test_48k_delivery_rate():
    gen = AVGenerator(GeneratorConfig(model="tiny", steps=1, sample_rate=48000))
    (out,) = gen.generate([ClipSpec("A bell rings.", 1, "1:1", seed=1)])
    assert out.sample_rate == 48000 and out.audio.shape[0] == 48000


def test_missing_released_component_names_the_path(tmp_path):
    (tmp_path / "distill").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        AVGenerator(GeneratorConfig(model="magihuman-distill", checkpoint_dir=tmp_path, sr_resolutions=()))
    message = str(err.value)
    assert str(tmp_path / "t5gemma-9b-9b-ul2") in message
    # The folders as downloaded, under their repository names.
    assert f"video_vae: {tmp_path / 'Wan2.2-TI2V-5B'}" in message and "Diffusers" not in message
    assert f"audio_vae: {tmp_path / 'stable-audio-open-1.0'}" in message and "/vae" not in message
    assert "distill:" not in message
    with pytest.raises(ValueError, match="checkpoint_dir"):
        AVGenerator(GeneratorConfig(model="magihuman-base"))


def test_released_layout_loads_from_paths_offline(tmp_path, monkeypatch, generator):
    """Tiny weights written in the released folder layout, as downloaded, load through the released
    code path from one checkpoint_dir."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    generator.text_encoder.model.save_pretrained(tmp_path / "t5gemma-9b-9b-ul2")
    generator.text_encoder.tokenizer.save_pretrained(tmp_path / "t5gemma-9b-9b-ul2")
    write_wan_original(tmp_path / "Wan2.2-TI2V-5B", generator.video_vae.vae)
    # The tiny encoder ends in the released 128-channel head, which diffusers' config cannot describe:
    # the root written is the same decoder under the encoder its config describes.
    from diffusers import AutoencoderOobleck

    stable_audio = AutoencoderOobleck.from_config(generator.audio_vae.vae.config)
    stable_audio.decoder.load_state_dict(generator.audio_vae.vae.decoder.state_dict())
    write_stable_audio_root(tmp_path / "stable-audio-open-1.0", stable_audio)
    save_checkpoint(generator.dit.state_dict(), tmp_path / "distill", arch=generator.dit.arch)
    sr = generator.sr_dit("540p")
    save_checkpoint(sr.state_dict(), tmp_path / "540p_sr", arch=sr.arch)
    write_turbo_vae_folder(tmp_path / "turbo_vae", generator.video_decoder)

    released = AVGenerator(
        GeneratorConfig(model="magihuman-distill", checkpoint_dir=tmp_path, sr_resolutions=("540p",), steps=2)
    )
    assert released.dit.load_report.loaded > 0
    assert isinstance(released.video_decoder, TurboVAED)  # decoder "auto" found turbo_vae/
    # The released preset generates at the released sizes.
    (out,) = released.generate([ClipSpec("A bell rings.", 1, "16:9", "256p", seed=1)])
    assert out.frames.shape == (25, 256, 448, 3)
    with pytest.raises(ValueError, match="sr_resolutions"):
        released.sr_dit("1080p")
