import math

import numpy as np
import pytest
import torch
from PIL import Image

from model.magihuman.audio_vae import AudioVAE, resample
from model.magihuman.video_vae import VideoVAE, fit_frames, reference_crop_box, reference_pixels


@pytest.fixture(scope="module")
def video_vae():
    return VideoVAE.tiny()


@pytest.fixture(scope="module")
def audio_vae():
    return AudioVAE.tiny()


# --- resampler -------------------------------------------------------------------------------


def _tone(freq, rate, seconds=0.5, amplitude=0.5):
    t = torch.arange(int(rate * seconds), dtype=torch.float64) / rate
    return amplitude * torch.sin(2 * math.pi * freq * t)


@pytest.mark.parametrize("new_rate", [44100, 48000])
@pytest.mark.parametrize("freq", [440.0, 5000.0, 18000.0])
def test_resampled_sine_keeps_frequency_and_amplitude(freq, new_rate):
    x = _tone(freq, 51200).float()
    y = resample(x, 51200, new_rate).double()
    assert y.shape[-1] == math.ceil(x.shape[-1] * new_rate / 51200)
    expected = _tone(freq, new_rate)[: y.shape[-1]]
    inner = slice(1000, -1000)  # away from the zero-padded edges
    assert (y[inner] - expected[inner]).abs().max() < 1e-4
    spectrum = torch.fft.rfft(y[inner] * torch.hann_window(y[inner].shape[0], dtype=torch.float64))
    peak_hz = spectrum.abs().argmax().item() * new_rate / y[inner].shape[0]
    assert abs(peak_hz - freq) < 2 * new_rate / y[inner].shape[0]


@pytest.mark.parametrize("freq", [22500.0, 24000.0, 25500.0])
def test_tone_above_new_nyquist_does_not_alias(freq):
    x = _tone(freq, 51200).float()
    y = resample(x, 51200, 44100)[1000:-1000]
    rms_ratio = y.pow(2).mean().sqrt() / x.pow(2).mean().sqrt()
    assert 20 * math.log10(rms_ratio.item()) < -60


def test_resample_keeps_leading_dims_and_channels_independent():
    left, right = _tone(1000.0, 51200).float(), _tone(3000.0, 51200).float()
    stereo = torch.stack([left, right])[None]  # [1, 2, S]
    y = resample(stereo, 51200, 44100)
    assert y.shape[:2] == (1, 2)
    assert torch.allclose(y[0, 0], resample(left, 51200, 44100))
    assert torch.allclose(y[0, 1], resample(right, 51200, 44100))


# --- video VAE -------------------------------------------------------------------------------


def test_fit_frames_crops_to_aspect_then_resizes():
    frames = torch.zeros(2, 64, 128, 3, dtype=torch.uint8)
    frames[:, :, 48:80] = 255  # a white band in the middle columns
    out = fit_frames(frames, 64, 64)  # 1:1 from 2:1: crop the middle 64 columns
    assert out.shape == (2, 64, 64, 3) and out.dtype == torch.uint8
    assert out[:, :, 16:48].min() == 255 and out[:, :, :14].max() == 0
    up = fit_frames(frames, 256, 128)
    assert up.shape == (2, 128, 256, 3)
    assert fit_frames(frames, 128, 64) is frames


def test_decode_shape_and_dtype(video_vae):
    z = torch.randn(2, 48, 3, 4, 6)
    frames = video_vae.decode(z)
    assert frames.shape == (2, 9, 64, 96, 3) and frames.dtype == torch.uint8
    assert frames.float().std() > 0


def test_decode_is_per_sample(video_vae):
    z = torch.randn(2, 48, 2, 4, 4)
    both = video_vae.decode(z)
    assert torch.equal(both[1], video_vae.decode(z[1:])[0])


def test_tiled_decode_for_large_frames_matches_shape(video_vae):
    z = torch.randn(1, 48, 2, 2, 20)  # 32 x 320 pixels
    whole = video_vae.decode(z)
    tiled = VideoVAE(video_vae.vae, tile_above_pixels=0).decode(z)
    assert video_vae.vae.use_tiling  # the last decode took the tiled path
    assert tiled.shape == whole.shape == (1, 5, 32, 320, 3)
    # Tiles blend over their overlap; the result stays close to the one-piece decode.
    assert (tiled.float() - whole.float()).abs().mean() < 40


def test_encode_image_normalizes_with_the_config_statistics(video_vae):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 100, 3), dtype=np.uint8))
    z = video_vae.encode_image(image, width=96, height=64)
    assert z.shape == (1, 48, 1, 4, 6) and z.dtype == torch.float32
    with torch.inference_mode():
        mu = video_vae.vae.encode(reference_pixels(image, 96, 64)).latent_dist.mode()
    mean = torch.tensor(video_vae.vae.config.latents_mean).view(1, 48, 1, 1, 1)
    std = torch.tensor(video_vae.vae.config.latents_std).view(1, 48, 1, 1, 1)
    torch.testing.assert_close(z, (mu - mean) / std)
    torch.testing.assert_close(video_vae.denormalize(z), mu)


@pytest.mark.parametrize("size, target, box", [
    # taller than 16:9: full width, int(500 * 256 / 448) = 285 rows, the box in half pixels
    ((500, 300), (448, 256), (0.0, 7.5, 500.0, 292.5)),
    # wider than 9:16: full height, int(300 * 256 / 448) = 171 columns
    ((500, 300), (256, 448), (164.5, 0.0, 335.5, 300.0)),
    ((640, 480), (352, 352), (80.0, 0.0, 560.0, 480.0)),
])
def test_crop_box_is_the_references(size, target, box):
    assert reference_crop_box(*size, *target) == box


def test_reference_pixels_are_a_center_crop_then_a_lanczos_resize_as_diffusers_prepares_them():
    from diffusers.video_processor import VideoProcessor

    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 500, 3), dtype=np.uint8))
    got = reference_pixels(image, 448, 256)
    # PIL rounds the half-pixel box: rows 8..292, as the reference's crop gives them.
    cropped = image.crop((0, 8, 500, 292))
    expected = VideoProcessor(vae_scale_factor=16).preprocess(cropped, height=256, width=448).unsqueeze(2)
    assert got.shape == (1, 3, 1, 256, 448)
    torch.testing.assert_close(got, expected.float(), atol=1e-6, rtol=0)
    bilinear = torch.from_numpy(np.asarray(cropped.resize((448, 256), Image.Resampling.BILINEAR), np.float32))
    assert not torch.allclose(got[0, :, 0].permute(1, 2, 0), bilinear / 127.5 - 1, atol=1e-3)


def test_video_vae_loads_a_saved_diffusers_folder_offline(tmp_path, monkeypatch, video_vae):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    video_vae.vae.save_pretrained(tmp_path / "vae")
    loaded = VideoVAE.from_pretrained(tmp_path / "vae", dtype=torch.float32)
    z = torch.randn(1, 48, 2, 2, 2)
    assert torch.equal(loaded.decode(z), video_vae.decode(z))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
        VideoVAE.from_pretrained(tmp_path / "missing")
    (tmp_path / "orig").mkdir()
    (tmp_path / "orig" / "Wan2.2_VAE.pth").write_bytes(b"")
    with pytest.raises(ValueError, match=r"Wan2\.2_VAE\.pth: not a state dict.*download"):
        VideoVAE.from_pretrained(tmp_path / "orig")


# --- audio VAE -------------------------------------------------------------------------------


@pytest.mark.parametrize("rate,per_latent", [(44100, 1764), (48000, 1920)])
def test_audio_decode_one_latent_per_video_frame(audio_vae, rate, per_latent):
    z = torch.randn(2, 26, 64)
    wave = audio_vae.decode(z, sample_rate=rate)
    assert wave.shape == (2, 26 * per_latent, 2) and wave.dtype == torch.float32
    assert torch.isfinite(wave).all() and wave.std() > 0


def test_audio_vae_loads_a_saved_diffusers_folder_offline(tmp_path, monkeypatch, audio_vae):
    from diffusers import AutoencoderOobleck

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The tiny preset's toy-width encoder ends in the released 128-channel head, which diffusers'
    # config cannot describe: the folder saved is the same decoder under diffusers' own head.
    saved = AutoencoderOobleck.from_config(audio_vae.vae.config)
    saved.decoder.load_state_dict(audio_vae.vae.decoder.state_dict())
    saved.save_pretrained(tmp_path / "vae")
    loaded = AudioVAE.from_pretrained(tmp_path / "vae")
    z = torch.randn(1, 4, 64)
    torch.testing.assert_close(loaded.decode(z), audio_vae.decode(z))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        AudioVAE.from_pretrained(tmp_path / "nope")


def test_audio_vae_rejects_a_vae_with_another_hop():
    from diffusers import AutoencoderOobleck

    other = AutoencoderOobleck(encoder_hidden_size=4, downsampling_ratios=[2, 4], channel_multiples=[1, 2, 2], decoder_channels=4)
    with pytest.raises(ValueError, match="hop 8"):
        AudioVAE(other)
