"""The component folders load in the forms users download them, each to the same weights as the
diffusers form: Wan-AI/Wan2.2-TI2V-5B's original Wan2.2_VAE.pth, stabilityai/stable-audio-open-1.0's
root (model_config.json + model.safetensors, the VAE under `pretransform.model.`), and
google/t5gemma-9b-9b-ul2 as the hub ships it. The fixtures are tiny models written in those layouts:
the original key names are made here by renaming a diffusers state dict back, independently of the
loaders' own renaming."""

from __future__ import annotations

import json
import re

import pytest
import torch
from diffusers import AutoencoderKLWan, AutoencoderOobleck
from safetensors.torch import save_file

from model.magihuman.audio_vae import AudioVAE
from model.magihuman.video_vae import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD, VideoVAE

# --- Wan2.2 VAE: the original layout -----------------------------------------------------------

_RESNET_PARTS = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma",
                 "conv2": "residual.6", "conv_shortcut": "shortcut"}


def _resnet_part(rest: str) -> str:
    for new, old in _RESNET_PARTS.items():
        if rest.startswith(new):
            return old + rest[len(new):]
    raise AssertionError(rest)


def wan_diffusers_to_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """AutoencoderKLWan names -> the Wan repository's (Encoder3d/Decoder3d of WanVAE_): a down/up
    block is one Sequential of its residual blocks followed by its resampler."""
    resnets = {}
    for key in state_dict:
        if m := re.match(r"(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.resnets\.(\d+)\.", key):
            resnets[(m[1], m[2])] = max(resnets.get((m[1], m[2]), 0), int(m[3]) + 1)
    out = {}
    for key, value in state_dict.items():
        if m := re.match(r"(quant_conv|post_quant_conv)\.(.*)", key):
            new = {"quant_conv": "conv1", "post_quant_conv": "conv2"}[m[1]] + "." + m[2]
        elif m := re.match(r"(encoder|decoder)\.(conv_in|norm_out|conv_out)\.(.*)", key):
            new = f"{m[1]}.{ {'conv_in': 'conv1', 'norm_out': 'head.0', 'conv_out': 'head.2'}[m[2]] }.{m[3]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)", key):
            new = f"{m[1]}.middle.{2 * int(m[2])}.{_resnet_part(m[3])}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
            new = f"{m[1]}.middle.1.{m[2]}"
        elif m := re.match(r"(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            side = "encoder.downsamples" if m[1].startswith("encoder") else "decoder.upsamples"
            inner = "downsamples" if m[1].startswith("encoder") else "upsamples"
            new = f"{side}.{m[2]}.{inner}.{m[3]}.{_resnet_part(m[4])}"
        elif m := re.match(r"(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.(downsampler|upsampler)\.(.*)", key):
            side = "encoder.downsamples" if m[1].startswith("encoder") else "decoder.upsamples"
            inner = "downsamples" if m[1].startswith("encoder") else "upsamples"
            new = f"{side}.{m[2]}.{inner}.{resnets[(m[1], m[2])]}.{m[4]}"
        else:
            raise AssertionError(f"unmapped diffusers key {key}")
        out[new] = value
    return out


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


def oobleck_diffusers_to_stable_audio(state_dict: dict[str, torch.Tensor], blocks: int) -> dict[str, torch.Tensor]:
    """AutoencoderOobleck names -> stable-audio-tools' (OobleckEncoder/Decoder `layers` Sequentials,
    SnakeBeta parameters as [C]), under the `pretransform.model.` prefix of the full model."""
    def unit(rest: str) -> str:  # a ResidualUnit: snake, conv (dilated), snake, conv
        for new, old in (("snake1.", "layers.0."), ("conv1.", "layers.1."), ("snake2.", "layers.2."), ("conv2.", "layers.3.")):
            rest = rest.replace(new, old, 1) if rest.startswith(new) else rest
        return rest

    out = {}
    for key, value in state_dict.items():
        side, rest = key.split(".", 1)
        if m := re.match(r"block\.(\d+)\.(.*)", rest):
            layer, inner = int(m[1]) + 1, m[2]
            if u := re.match(r"res_unit(\d)\.(.*)", inner):
                index = int(u[1]) - 1 if side == "encoder" else int(u[1]) + 1
                inner = f"layers.{index}.{unit(u[2])}"
            else:
                names = {"snake1": 3, "conv1": 4} if side == "encoder" else {"snake1": 0, "conv_t1": 1}
                name, tail = inner.split(".", 1)
                inner = f"layers.{names[name]}.{tail}"
            new = f"{side}.layers.{layer}.{inner}"
        else:
            name, tail = rest.split(".", 1)
            new = f"{side}.layers.{ {'conv1': 0, 'snake1': blocks + 1, 'conv2': blocks + 2}[name] }.{tail}"
        if re.search(r"\.(alpha|beta)$", new):
            value = value.reshape(-1)
        out["pretransform.model." + new] = value
    return out


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


def write_stable_audio_root(folder, vae: AutoencoderOobleck, dtype=torch.float32) -> None:
    folder.mkdir(parents=True)
    config = {"model_type": "diffusion_cond", "sample_size": 2097152, "sample_rate": 44100, "audio_channels": 2,
              "model": {"pretransform": {"type": "autoencoder", "iterate_batch": True, "config": {
                  "encoder": {"type": "oobleck", "requires_grad": False, "config": {
                      "in_channels": 2, "channels": 4, "c_mults": [1, 2, 2, 2, 2], "strides": STRIDES,
                      "latent_dim": 4, "use_snake": True}},  # the release: 128 and 128, equal as here
                  "decoder": {"type": "oobleck", "config": {
                      "out_channels": 2, "channels": 4, "c_mults": [1, 2, 2, 2, 2], "strides": STRIDES,
                      "latent_dim": 64, "use_snake": True, "final_tanh": False}},
                  "bottleneck": {"type": "vae"}, "latent_dim": 64, "downsampling_ratio": 2048, "io_channels": 2}}}}
    (folder / "model_config.json").write_text(json.dumps(config))
    weights = oobleck_diffusers_to_stable_audio(vae.state_dict(), blocks=len(STRIDES))
    # The rest of the full model sits in the same file; the loader reads the VAE's keys only.
    weights["model.model.transformer.layers.0.self_attn.to_qkv.weight"] = torch.randn(6, 2)
    weights["conditioner.conditioners.seconds_total.embedder.embedding.1.weight"] = torch.randn(3, 3)
    save_file({k: v.to(dtype).contiguous() for k, v in weights.items()}, folder / "model.safetensors")


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
