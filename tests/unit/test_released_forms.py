"""The component folders load in the forms users download them, each to the same weights as the
diffusers form: Wan-AI/Wan2.2-TI2V-5B's original Wan2.2_VAE.pth, stabilityai/stable-audio-open-1.0's
root (model_config.json + model.safetensors, the VAE under `pretransform.model.`), and
google/t5gemma-9b-9b-ul2 as the hub ships it. The fixtures are tiny models written in those layouts
(tests/integration/released_checkpoints.py)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKLWan, AutoencoderOobleck
from released_checkpoints import wan_diffusers_to_original, write_stable_audio_root

from model.magihuman.audio_vae import AudioVAE
from model.magihuman.video_vae import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD, VideoVAE

# --- Wan2.2 VAE: the original layout -----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_wan() -> AutoencoderKLWan:
    # The released structure (2 residual blocks per stage, residual down/up blocks, time downsampling
    # in the last two stages) at toy width, with widths that change between stages and a decoder
    # wider than the encoder, as Wan2.2's (160 / 256) is.
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8, decoder_base_dim=12, z_dim=48, dim_mult=[1, 2, 2, 2], num_res_blocks=2,
        temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
        patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16,
        latents_mean=list(WAN22_LATENTS_MEAN), latents_std=list(WAN22_LATENTS_STD),
    ).eval()
    with torch.no_grad():  # RMS-norm gammas start at 1: make every weight distinct so a mix-up shows
        for param in vae.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return vae


def test_original_wan_pth_loads_to_the_diffusers_weights(tmp_path, tiny_wan):
    original = wan_diffusers_to_original(tiny_wan.state_dict())
    # Names as in the released file.
    for key in ("encoder.conv1.weight", "encoder.downsamples.0.downsamples.0.residual.0.gamma",
                "encoder.downsamples.1.downsamples.0.shortcut.weight", "encoder.downsamples.1.downsamples.2.time_conv.weight",
                "encoder.middle.1.to_qkv.weight", "encoder.head.2.weight", "conv1.weight", "conv2.bias",
                "decoder.upsamples.0.upsamples.3.resample.1.weight", "decoder.head.0.gamma"):
        assert key in original, key
    folder = tmp_path / "Wan2.2-TI2V-5B"
    folder.mkdir()
    torch.save(original, folder / "Wan2.2_VAE.pth")

    loaded = VideoVAE.from_pretrained(folder, dtype=torch.float32)
    expected = tiny_wan.state_dict()
    got = loaded.vae.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert list(loaded.vae.config.latents_mean) == list(WAN22_LATENTS_MEAN)

    diffusers_form = VideoVAE(tiny_wan, dtype=torch.float32)
    z = torch.randn(1, 48, 2, 2, 2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.decode(z), diffusers_form.decode(z))


class NotATensor:
    """Any class: a pickle that names one must not be loaded."""


def test_original_wan_pth_is_read_without_unpickling_code(tmp_path):
    folder = tmp_path / "Wan2.2-TI2V-5B"
    folder.mkdir()
    torch.save({"encoder.conv1.weight": NotATensor()}, folder / "Wan2.2_VAE.pth")
    with pytest.raises(ValueError, match=r"Wan2\.2_VAE\.pth: not a state dict.*weights_only"):
        VideoVAE.from_pretrained(folder, dtype=torch.float32)


def test_the_diffusers_repository_folder_and_its_vae_folder_load(tmp_path, tiny_wan, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny_wan.save_pretrained(tmp_path / "Wan2.2-TI2V-5B-Diffusers" / "vae")
    z = torch.randn(1, 48, 2, 2, 2, generator=torch.Generator().manual_seed(2))
    expected = VideoVAE(tiny_wan, dtype=torch.float32).decode(z)
    for folder in (tmp_path / "Wan2.2-TI2V-5B-Diffusers", tmp_path / "Wan2.2-TI2V-5B-Diffusers" / "vae"):
        assert torch.equal(VideoVAE.from_pretrained(folder, dtype=torch.float32).decode(z), expected)
    with pytest.raises(FileNotFoundError, match=r"Wan2\.2_VAE\.pth.*-Diffusers"):
        VideoVAE.from_pretrained(tmp_path / "empty")


# --- stable-audio-open-1.0: the repository root -----------------------------------------------

STRIDES = [2, 4, 4, 8, 8]


@pytest.fixture(scope="module")
def tiny_oobleck() -> AutoencoderOobleck:
    torch.manual_seed(0)
    vae = AutoencoderOobleck(encoder_hidden_size=4, downsampling_ratios=STRIDES, channel_multiples=[1, 2, 2, 2, 2],
                             decoder_channels=4, decoder_input_channels=64, audio_channels=2, sampling_rate=44100).eval()
    with torch.no_grad():
        for param in vae.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return vae


def test_stable_audio_root_loads_to_the_diffusers_weights(tmp_path, tiny_oobleck):
    folder = tmp_path / "stable-audio-open-1.0"
    write_stable_audio_root(folder, tiny_oobleck)
    loaded = AudioVAE.from_pretrained(folder)
    expected = tiny_oobleck.state_dict()
    got = loaded.vae.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    z = torch.randn(1, 3, 64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loaded.decode(z), AudioVAE(tiny_oobleck).decode(z), atol=0, rtol=0)


def test_stable_audio_root_in_half_precision_is_cast_on_load(tmp_path, tiny_oobleck):
    folder = tmp_path / "stable-audio-open-1.0"
    write_stable_audio_root(folder, tiny_oobleck, dtype=torch.float16)
    loaded = AudioVAE.from_pretrained(folder)
    assert loaded.vae.dtype == torch.float32
    weight = "decoder.conv1.weight_v"
    torch.testing.assert_close(loaded.vae.state_dict()[weight], tiny_oobleck.state_dict()[weight].half().float())


def test_the_vae_subfolder_of_stable_audio_keeps_loading(tmp_path, tiny_oobleck, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny_oobleck.save_pretrained(tmp_path / "stable-audio-open-1.0" / "vae")
    z = torch.randn(1, 3, 64, generator=torch.Generator().manual_seed(4))
    expected = AudioVAE(tiny_oobleck).decode(z)
    for folder in (tmp_path / "stable-audio-open-1.0", tmp_path / "stable-audio-open-1.0" / "vae"):
        torch.testing.assert_close(AudioVAE.from_pretrained(folder).decode(z), expected, atol=0, rtol=0)
    with pytest.raises(FileNotFoundError, match=r"model_config\.json.*vae/"):
        AudioVAE.from_pretrained(tmp_path / "empty")


# --- google/t5gemma-9b-9b-ul2 as the hub ships it ----------------------------------------------


def test_t5gemma_loads_from_the_hub_layout(tmp_path, monkeypatch):
    """The hub repository holds the whole encoder-decoder (T5GemmaForConditionalGeneration: `model.encoder.*`,
    `model.decoder.*`, the LM head) in safetensors shards with an index, in bfloat16, and its tokenizer
    files; the text encoder takes the encoder half."""
    from transformers import T5GemmaForConditionalGeneration

    from model.magihuman.text_encoder import TextEncoder, TinyT5GemmaConfig, byte_level_tokenizer, tiny_t5gemma_encoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer = byte_level_tokenizer()
    encoder_only = tiny_t5gemma_encoder(TinyT5GemmaConfig(), vocab_size=len(tokenizer), seed=5)
    config = encoder_only.config
    config.is_encoder_decoder = True
    torch.manual_seed(5)
    full = T5GemmaForConditionalGeneration(config).to(torch.bfloat16)
    folder = tmp_path / "t5gemma-9b-9b-ul2"
    full.save_pretrained(folder, max_shard_size="200KB")
    tokenizer.save_pretrained(folder)
    files = {p.name for p in folder.iterdir()}
    assert "model.safetensors.index.json" in files and "tokenizer.json" in files
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert any(k.startswith("model.encoder.layers.") for k in index) and any(k.startswith("model.decoder.") for k in index)

    loaded = TextEncoder.from_pretrained(folder, "negative", dtype=torch.float32)
    expected = {k.removeprefix("model."): v.float() for k, v in full.state_dict().items() if k.startswith("model.encoder.")}
    got = loaded.model.state_dict()
    assert expected.keys() <= got.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    prompt = "A man opens a bottle of soda."
    ids = tokenizer([prompt], return_tensors="pt")
    with torch.inference_mode():
        reference = full.float().model.encoder(**ids).last_hidden_state[0]
    got_embedding = loaded.encode(prompt)
    assert got_embedding.length == ids.input_ids.shape[1]
    # Same weights (checked exactly above); the two models may run different attention kernels.
    torch.testing.assert_close(got_embedding.embedding[: got_embedding.length], reference, atol=2e-3, rtol=1e-2)
