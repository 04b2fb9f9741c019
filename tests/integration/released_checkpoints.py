"""Tiny checkpoints in the released on-disk forms of the stack's components, for tests: the
original key names are made by renaming a diffusers state dict back, written independently of the
loaders' own renaming (checked once against the reference's own modules: the same names and shapes)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, AutoencoderOobleck
from safetensors.torch import save_file

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


def write_wan_original(folder: Path, vae: AutoencoderKLWan) -> Path:
    """`folder` as Wan-AI/Wan2.2-TI2V-5B holds its VAE: Wan2.2_VAE.pth, a pickled state dict."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(wan_diffusers_to_original(vae.state_dict()), folder / "Wan2.2_VAE.pth")
    return folder / "Wan2.2_VAE.pth"


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


def write_stable_audio_root(folder: Path, vae: AutoencoderOobleck, dtype=torch.float32) -> None:
    """`folder` as stabilityai/stable-audio-open-1.0's root: model_config.json (the release's layout,
    with `vae`'s widths) and one model.safetensors holding the whole model, the VAE under
    `pretransform.model.`."""
    folder.mkdir(parents=True, exist_ok=True)
    c = vae.config
    widths = {"channels": c.encoder_hidden_size, "c_mults": list(c.channel_multiples), "strides": list(c.downsampling_ratios)}
    config = {"model_type": "diffusion_cond", "sample_size": 2097152, "sample_rate": c.sampling_rate, "audio_channels": 2,
              "model": {"pretransform": {"type": "autoencoder", "iterate_batch": True, "config": {
                  # the release: channels 128 and latent_dim 128, equal as AutoencoderOobleck has them
                  "encoder": {"type": "oobleck", "requires_grad": False, "config": {
                      "in_channels": c.audio_channels, **widths, "latent_dim": c.encoder_hidden_size, "use_snake": True}},
                  "decoder": {"type": "oobleck", "config": {
                      "out_channels": c.audio_channels, **widths, "channels": c.decoder_channels,
                      "latent_dim": c.decoder_input_channels, "use_snake": True, "final_tanh": False}},
                  "bottleneck": {"type": "vae"}, "latent_dim": c.decoder_input_channels,
                  "downsampling_ratio": 2048, "io_channels": c.audio_channels}}}}
    (folder / "model_config.json").write_text(json.dumps(config))
    weights = oobleck_diffusers_to_stable_audio(vae.state_dict(), blocks=len(widths["strides"]))
    # The rest of the full model sits in the same file; the loader reads the VAE's keys only.
    weights["model.model.transformer.layers.0.self_attn.to_qkv.weight"] = torch.randn(6, 2)
    weights["conditioner.conditioners.seconds_total.embedder.embedding.1.weight"] = torch.randn(3, 3)
    save_file({k: v.to(dtype).contiguous() for k, v in weights.items()}, folder / "model.safetensors")
