"""Named generator presets: which DiT, sampler, text encoder and VAEs make up a model stack.

Released stack, all under one `checkpoint_dir` (each folder can be pointed elsewhere with
`GeneratorConfig.paths`):

    <checkpoint_dir>/
      distill/                        GAIR/daVinci-MagiHuman  distill/   (8 steps, no CFG)
      base/                           GAIR/daVinci-MagiHuman  base/      (32 UniPC steps, CFG)
      540p_sr/                        GAIR/daVinci-MagiHuman  540p_sr/   (super-resolution to 540p)
      1080p_sr/                       GAIR/daVinci-MagiHuman  1080p_sr/  (super-resolution to 1080p)
      t5gemma-9b-9b-ul2/              google/t5gemma-9b-9b-ul2 (whole repository)
      Wan2.2-TI2V-5B/                 Wan-AI/Wan2.2-TI2V-5B (its Wan2.2_VAE.pth is read; the -Diffusers
                                      repository, or its vae/ folder, loads from here too)
      stable-audio-open-1.0/          stabilityai/stable-audio-open-1.0 (model_config.json + model.safetensors,
                                      as the reference reads it, or its diffusers vae/ folder)
      turbo_vae/                      GAIR/daVinci-MagiHuman  turbo_vae/ (distilled decoder; optional,
                                      see GeneratorConfig.decoder)

The `tiny` preset builds every component with random weights at toy width (same code paths, real
architecture) and generates at small sizes that the final resize brings to the delivery size:
it exercises the machinery on a CPU and makes noise, not pictures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from model.magihuman.audio_vae import TinyOobleckConfig
from model.magihuman.config import PRESETS as ARCH_PRESETS
from model.magihuman.config import TINY_TEXT_CHANNELS, ArchConfig
from model.magihuman.sizes import BASE_SIZES, SR_SIZES, ClipGeometry, clip_geometry
from schemas.formats import GENERATION_SIZES
from model.magihuman.text_encoder import TinyT5GemmaConfig
from model.magihuman.turbo_vae import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD, TurboVAEDConfig
from model.magihuman.video_vae import TINY_LATENTS_MEAN, TINY_LATENTS_STD, TinyWanVAEConfig

ModelName = Literal["tiny", "magihuman-distill", "magihuman-base"]
Component = Literal["dit", "sr_540p", "sr_1080p", "text_encoder", "video_vae", "audio_vae", "turbo_vae"]
# 720p runs the 1080p super-resolution DiT at its 720p grid (the SR DiT takes any multiple-of-32
# size, as the reference's does; its frame-local attention keeps 720p's tokens affordable).
SR_COMPONENT = {"540p": "sr_540p", "720p": "sr_1080p", "1080p": "sr_1080p"}

# The fixed negative prompt the released base model runs CFG against (reference MagiEvaluator):
# visual defects, then audio defects, then delivery defects.
NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly "
    "drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy "
    "background, three legs, many people in the background, walking backwards"
    ", low quality, worst quality, poor quality, noise, background noise, hiss, hum, buzz, crackle, static, "
    "compression artifacts, MP3 artifacts, digital clipping, distortion, muffled, muddy, unclear, echo, reverb, "
    "room echo, over-reverberated, hollow sound, distant, washed out, harsh, shrill, piercing, grating, tinny, "
    "thin sound, boomy, bass-heavy, flat EQ, over-compressed, abrupt cut, jarring transition, sudden silence, "
    "looping artifact, music, instrumental, sirens, alarms, crowd noise, unrelated sound effects, chaotic, "
    "disorganized, messy, cheap sound"
    ", emotionless, flat delivery, deadpan, lifeless, apathetic, robotic, mechanical, monotone, flat intonation, "
    "undynamic, boring, reading from a script, AI voice, synthetic, text-to-speech, TTS, insincere, fake emotion, "
    "exaggerated, overly dramatic, melodramatic, cheesy, cringey, hesitant, unconfident, tired, weak voice, "
    "stuttering, stammering, mumbling, slurred speech, mispronounced, bad articulation, lisp, vocal fry, creaky "
    "voice, mouth clicks, lip smacks, wet mouth sounds, heavy breathing, audible inhales, plosives, p-pops, "
    "coughing, clearing throat, sneezing, speaking too fast, rushed, speaking too slow, dragged out, unnatural "
    "pauses, awkward silence, choppy, disjointed, multiple speakers, two voices, background talking, out of tune, "
    "off-key, autotune artifacts"
)

RELEASED_FOLDERS: dict[str, str] = {
    "sr_540p": "540p_sr",
    "sr_1080p": "1080p_sr",
    "text_encoder": "t5gemma-9b-9b-ul2",
    "video_vae": "Wan2.2-TI2V-5B",
    "audio_vae": "stable-audio-open-1.0",
    "turbo_vae": "turbo_vae",
}


# The released components' shapes, for building them without their weights (model/memory.py's
# accounting on the meta device, bench/gpu_check.py's random-weight stack); loading reads the
# folders' own configs. The encoder of google/t5gemma-9b-9b-ul2 has Gemma 2 9B's shape:
T5GEMMA_9B = TinyT5GemmaConfig(
    hidden_size=3584, intermediate_size=14336, num_hidden_layers=42, num_attention_heads=16, num_key_value_heads=8, head_dim=256
)
T5GEMMA_VOCAB = 256000
OOBLECK_RELEASED = TinyOobleckConfig(encoder_hidden_size=128, decoder_channels=128, channel_multiples=(1, 2, 4, 8, 16))
# Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json
WAN22_VAE = dict(
    base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True],
    is_residual=True, in_channels=12, out_channels=12, patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16,
    latents_mean=list(WAN22_LATENTS_MEAN), latents_std=list(WAN22_LATENTS_STD),
)


@dataclass(frozen=True)
class TinyComponents:
    """Toy widths of every component; the DiT's text width must match the text encoder's."""

    text_encoder: TinyT5GemmaConfig = TinyT5GemmaConfig(hidden_size=TINY_TEXT_CHANNELS)
    video_vae: TinyWanVAEConfig = TinyWanVAEConfig()
    audio_vae: TinyOobleckConfig = TinyOobleckConfig()
    # The released decoder's layout and 7/7 window at toy width, in the tiny VAE's latent space.
    turbo_vae: TurboVAEDConfig = TurboVAEDConfig(
        decoder_block_out_channels=(8, 8, 16, 16),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        latents_mean=TINY_LATENTS_MEAN,
        latents_std=TINY_LATENTS_STD,
    )


@dataclass(frozen=True)
class ModelPreset:
    name: str
    mode: Literal["distill", "base"]
    steps: int
    dit_arch: ArchConfig
    sr_archs: dict[str, ArchConfig]  # resolution -> SR DiT architecture
    folders: dict[str, str]  # component -> folder under checkpoint_dir (released presets)
    sr_steps: int = 5
    shift: float = 5.0
    negative_prompt: str = NEGATIVE_PROMPT
    # (width, height) tables the DiT generates at; delivery sizes always come from sizes.FINAL_SIZES.
    base_sizes: dict[str, tuple[int, int]] = field(default_factory=lambda: dict(BASE_SIZES))
    sr_sizes: dict[str, dict[str, tuple[int, int]]] = field(default_factory=lambda: dict(SR_SIZES))
    tiny: TinyComponents | None = None  # set: build every component with random weights

    @property
    def uses_cfg(self) -> bool:
        return self.mode == "base"

    def geometry(self, duration_s: float, aspect_ratio: str, resolution: str) -> ClipGeometry:
        """A clip's geometry at this preset's generation sizes."""
        return clip_geometry(duration_s, aspect_ratio, resolution, base_sizes=self.base_sizes, sr_sizes=self.sr_sizes)


_TINY_ARCH = ARCH_PRESETS["tiny"]
_TINY_SR_LOCAL = _TINY_ARCH.replace(local_attn_layers=(0, 2, 3, 5), coords_style="v1", frame_receptive_field=2)
# How much smaller the tiny stack generates than the released one, per pass (the toy models
# make noise; small grids keep a CPU render in seconds). The final resize brings every clip to
# its delivery size.
_TINY_SCALE = {"base": 3.5, "540p": 4.8, "720p": 5.6, "1080p": 6.7}


def _tiny_sizes(stage: str, kept: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """The tiny preset's grid per aspect at one stage: the sizes it has always used for the first
    three aspects (kept, so their clips do not change), the released grid scaled down for the rest."""
    def shrink(side: int) -> int:
        return max(32, 32 * round(side / _TINY_SCALE[stage] / 32))

    return {aspect: kept.get(aspect) or (shrink(sizes[stage][0]), shrink(sizes[stage][1]))
            for aspect, sizes in GENERATION_SIZES.items()}

PRESETS: dict[str, ModelPreset] = {
    "magihuman-distill": ModelPreset(
        name="magihuman-distill",
        mode="distill",
        steps=8,
        dit_arch=ARCH_PRESETS["magihuman-distill"],
        sr_archs={"540p": ARCH_PRESETS["magihuman-sr-540p"], "720p": ARCH_PRESETS["magihuman-sr-1080p"],
                  "1080p": ARCH_PRESETS["magihuman-sr-1080p"]},
        folders={"dit": "distill", **RELEASED_FOLDERS},
    ),
    "magihuman-base": ModelPreset(
        name="magihuman-base",
        mode="base",
        steps=32,
        dit_arch=ARCH_PRESETS["magihuman-base"],
        sr_archs={"540p": ARCH_PRESETS["magihuman-sr-540p"], "720p": ARCH_PRESETS["magihuman-sr-1080p"],
                  "1080p": ARCH_PRESETS["magihuman-sr-1080p"]},
        folders={"dit": "base", **RELEASED_FOLDERS},
    ),
    # Distilled sampling on toy models. The SR DiTs mirror the released pair: 540p with global
    # attention, 1080p with frame-local attention (receptive field shrunk to suit short clips).
    "tiny": ModelPreset(
        name="tiny",
        mode="distill",
        steps=8,
        dit_arch=_TINY_ARCH,
        sr_archs={
            "540p": _TINY_ARCH.replace(coords_style="v1"),
            "720p": _TINY_SR_LOCAL,
            "1080p": _TINY_SR_LOCAL,
        },
        folders={},
        base_sizes=_tiny_sizes("base", {"16:9": (128, 64), "9:16": (64, 128), "1:1": (96, 96)}),
        sr_sizes={
            "540p": _tiny_sizes("540p", {"16:9": (192, 96), "9:16": (96, 192), "1:1": (128, 128)}),
            "720p": _tiny_sizes("720p", {}),
            "1080p": _tiny_sizes("1080p", {"16:9": (288, 160), "9:16": (160, 288), "1:1": (224, 224)}),
        },
        tiny=TinyComponents(),
    ),
}


def get_preset(name: str) -> ModelPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; presets: {sorted(PRESETS)}")
    return PRESETS[name]
