"""AVGenerator: clip parameters in, decoded frames and audio out.

One instance per rank holds the stack (DiT or its TP shard, SR DiTs loaded on first use, video
and audio VAEs; the replica's one text encoder on rank 0, on the GPU or the CPU). `generate` batches clips of the same shape through one denoise call; every
clip draws its noise from its own CPU generator seeded by the clip's seed, so a clip does not
depend on what it was batched with, and the same seed gives the same clip on the same device.

Phases per batch: text (prompt embeddings, cached), denoise (base DiT, plus reference-image
encoding for image-to-video), super_resolution (540p / 1080p only), decode (video decoder, the
distilled TurboVAED or the full Wan2.2 VAE, and the audio VAE; trim and resize to the delivery size).
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from model.magihuman import ArchConfig, denoise, load_dit, prepare_sr_latents
from model.magihuman.checkpoint import checkpoint_arch
from model.magihuman.audio_vae import AudioVAE
from model.magihuman.dit import MagiHumanDiT
from model.magihuman.sizes import (
    AUDIO_LATENT_CHANNELS,
    FPS,
    VIDEO_LATENT_CHANNELS,
    ClipGeometry,
    FrameFit,
)
from model.magihuman.text_encoder import TextEncoder
from model.magihuman.turbo_vae import TurboVAED
from model.magihuman.video_vae import VideoVAE, fit_frame_count, fit_frames
from model.memory import module_bytes
from model.parallel import TPGroup, audio_rank, broadcast_from_rank0, gather_to_rank0, split_decode
from model.generator_config import GeneratorConfig
from model.presets import SR_COMPONENT, get_preset
from model.reference_image import load_reference_image

log = logging.getLogger(__name__)

PHASES = ("text", "denoise", "super_resolution", "decode")


@dataclass(frozen=True)
class ClipSpec:
    """One clip to make. `reference_image` (image-to-video) is a local path, a file:// or s3:// URI,
    a PIL image or a uint8 [H, W, 3] array. `audio` (audio-driven, float32 [samples, channels] at
    `audio_rate`) is a recording the clip is generated to: encoded once, its latent held fixed
    while the video is denoised (trimmed or padded with silence to the clip's length)."""

    prompt: str
    duration_s: float
    aspect_ratio: str = "16:9"
    resolution: str = "256p"
    seed: int = 0
    reference_image: str | os.PathLike | np.ndarray | Image.Image | None = None
    # replaces the preset's negative prompt in CFG (the base model; the distilled one has no CFG)
    negative_prompt: str | None = None
    audio: np.ndarray | None = field(default=None, compare=False)
    audio_rate: int = 0


@dataclass
class ClipLatents:
    video: torch.Tensor  # [48, T, h, w], normalized, as decoded
    audio: torch.Tensor  # [N, 64]
    image_condition: torch.Tensor | None  # [48, 1, h, w] of the reference image at the decode size


@dataclass
class ClipOutput:
    frames: np.ndarray  # uint8 [duration * 25, H, W, 3]
    audio: np.ndarray  # float32 [duration * sample_rate, channels]
    sample_rate: int
    fps: int = FPS
    # How the decoded frames were brought to the requested duration (see ClipGeometry.frame_fit).
    frame_fit: FrameFit = "exact"
    # Seconds per phase: the batch's wall time of that phase divided by the batch size.
    timings: dict[str, float] = field(default_factory=dict)
    latents: ClipLatents | None = None


class AVGenerator:
    """The whole generator stack of one replica."""

    def __init__(self, config: GeneratorConfig, tp: TPGroup | None = None):
        # Under tensor parallelism (model/replica.py) every DiT is this rank's shard; the replica's one
        # text encoder (and its prompt cache) lives on rank 0, which broadcasts the embeddings; every
        # rank decodes its share of the video, one rank the audio, and rank 0 assembles the clip.
        self.tp = tp
        self.config = config
        self.preset = get_preset(config.model)
        self.device = torch.device(config.device)
        self.dtype = config.torch_dtype()
        preset = self.preset
        holds_text = tp is None or tp.rank == 0
        text_device = self.device if config.text_encoder_device in (None, self.device.type) else torch.device("cpu")
        self.text_encoder: TextEncoder | None = None
        if preset.tiny is not None:
            tiny = preset.tiny
            if holds_text:
                self.text_encoder = TextEncoder.tiny(
                    preset.negative_prompt, tiny.text_encoder, device=text_device, cache_size=config.text_cache_size
                )
            self.video_vae = VideoVAE.tiny(tiny.video_vae, device=self.device)
            self.audio_vae = AudioVAE.tiny(tiny.audio_vae, device=self.device)
            turbo = TurboVAED.tiny(tiny.turbo_vae, device=self.device) if config.video_decoder() == "turbo" else None
            self.dit = load_dit(None, arch=preset.dit_arch, device=self.device, compute_dtype=self.dtype, seed=0, tp=tp)
        else:
            paths = config.released_paths()
            if holds_text:
                self.text_encoder = TextEncoder.from_pretrained(
                    paths["text_encoder"], preset.negative_prompt, text_device, self.dtype, config.text_cache_size
                )
            self.video_vae = VideoVAE.from_pretrained(paths["video_vae"], self.device, self.dtype)
            self.audio_vae = AudioVAE.from_pretrained(paths["audio_vae"], self.device, torch.float32)
            self.dit = self._load_released_dit(paths["dit"], preset.dit_arch)
            turbo = TurboVAED.from_pretrained(paths["turbo_vae"], self.device, self.dtype) if "turbo_vae" in paths else None
        # The Wan2.2 VAE stays loaded either way: it encodes reference images.
        self.video_decoder: TurboVAED | VideoVAE = turbo if turbo is not None else self.video_vae
        if self.text_encoder is not None and self.text_encoder.hidden_size != self.dit.arch.text_in_channels:
            raise ValueError(
                f"text encoder width {self.text_encoder.hidden_size} != DiT text_in_channels "
                f"{self.dit.arch.text_in_channels}"
            )
        self._sr_dits: dict[str, MagiHumanDiT] = {}
        log.info("generator %r ready on %s (%s), video decoder %s", preset.name, self.device, self.dtype,
                 "TurboVAED" if turbo is not None else "Wan2.2 VAE")

    def _load_released_dit(self, path: Path, preset_arch: ArchConfig, super_resolution: bool = False) -> MagiHumanDiT:
        # A config.json in paddock's format says what the checkpoint is; else (a released folder) the
        # preset does. A super-resolution model always takes the preset's token layout.
        arch = checkpoint_arch(path, fallback=preset_arch, layout=preset_arch if super_resolution else None)
        return load_dit(path, arch=arch, device=self.device, compute_dtype=self.dtype, tp=self.tp)

    def sr_dit(self, resolution: str) -> MagiHumanDiT:
        """The super-resolution DiT for `resolution`, loaded on first use."""
        component = SR_COMPONENT[resolution]  # 720p and 1080p share one model
        if component not in self._sr_dits:
            if self.preset.tiny is None and resolution not in self.config.sr_resolutions:
                raise ValueError(
                    f"resolution {resolution!r} needs its super-resolution model; add it to "
                    f"GeneratorConfig.sr_resolutions (now {list(self.config.sr_resolutions)})"
                )
            arch = self.preset.sr_archs[resolution]
            if self.preset.tiny is not None:
                seed = 1 + sorted(set(SR_COMPONENT.values())).index(component)
                model = load_dit(None, arch=arch, device=self.device, compute_dtype=self.dtype, seed=seed, tp=self.tp)
            else:
                path = self.config.component_path(self.preset, SR_COMPONENT[resolution])
                model = self._load_released_dit(path, arch, super_resolution=True)
            self._sr_dits[component] = model
            log.info("super-resolution model %s loaded (for %s)", component, resolution)
        return self._sr_dits[component]

    def geometry(self, spec: ClipSpec) -> ClipGeometry:
        return self.preset.geometry(spec.duration_s, spec.aspect_ratio, spec.resolution)

    @contextmanager
    def _phase(self, timings: dict[str, float], name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start

    def generate(self, specs: list[ClipSpec]) -> list[ClipOutput]:
        """Clips for `specs`, in order. Clips of equal shape share one batch. On ranks other than 0
        of a TP group, a list of None: rank 0 answers for the replica."""
        groups: dict[tuple, list[int]] = {}
        for i, spec in enumerate(specs):
            geometry = self.geometry(spec)
            key = (geometry, spec.reference_image is not None, spec.audio is not None)
            groups.setdefault(key, []).append(i)
        outputs: list[ClipOutput | None] = [None] * len(specs)
        for (geometry, _, _), indices in groups.items():
            for i, output in zip(indices, self._generate_batch([specs[i] for i in indices], geometry)):
                outputs[i] = output
        return outputs  # type: ignore[return-value]

    @torch.inference_mode()
    def _generate_batch(self, specs: list[ClipSpec], geometry: ClipGeometry) -> list[ClipOutput]:
        preset, config = self.preset, self.config
        timings = {name: 0.0 for name in PHASES}
        generators = [torch.Generator(device="cpu").manual_seed(spec.seed) for spec in specs]
        images = None
        if specs[0].reference_image is not None:
            images = [load_reference_image(s.reference_image, config.s3_endpoint) for s in specs]

        with self._phase(timings, "text"):
            text, text_lens, null_text, null_lens = self._text([s.prompt for s in specs], [s.negative_prompt for s in specs])

        with self._phase(timings, "denoise"):
            latent_h, latent_w = geometry.base_latent_hw
            video, audio = self._initial_noise(generators, geometry, latent_h, latent_w)
            audio_driven = specs[0].audio is not None
            if audio_driven:  # the reference's is_a2v: the recording's latent replaces the audio noise
                audio = torch.stack([self.audio_vae.encode(s.audio, s.audio_rate, geometry.audio_latents, g)
                                     for s, g in zip(specs, generators)]).to(self.device)
            condition = self._encode_images(images, *geometry.base_size)
            video, audio = denoise(
                self.dit,
                video,
                audio,
                text,
                text_lens,
                steps=config.steps or preset.steps,
                mode=preset.mode,
                shift=preset.shift,
                null_text=null_text,
                null_text_lens=null_lens,
                video_condition=condition,
                generator=generators,
                audio_fixed=audio_driven,
            )

        if geometry.sr_size is not None:
            sr_dit = self.sr_dit(geometry.resolution)  # loaded on first use, outside the timing
            with self._phase(timings, "super_resolution"):
                sr_h, sr_w = geometry.sr_latent_hw
                condition = self._encode_images(images, *geometry.sr_size)
                sr_video, sr_audio = prepare_sr_latents(video, audio, sr_h, sr_w, generator=generators)
                # The SR pass refines the video only; the base pass's audio is the clip's audio.
                video, _ = denoise(
                    sr_dit,
                    sr_video,
                    sr_audio,
                    text,
                    text_lens,
                    steps=config.sr_steps or preset.sr_steps,
                    mode="sr",
                    shift=preset.shift,
                    video_condition=condition,
                    generator=generators,
                )

        with self._phase(timings, "decode"):
            decoded, waveforms = self._decode(video, audio, geometry)
            if decoded is None:  # a rank other than 0: rank 0 answers for the replica
                return []
            width, height = geometry.final_size
            frames = [fit_frame_count(fit_frames(clip, width, height), geometry.frames) for clip in decoded]

        per_clip = {name: seconds / len(specs) for name, seconds in timings.items()}
        outputs = []
        for i in range(len(specs)):
            latents = None
            if config.return_latents:
                latents = ClipLatents(
                    video=video[i].cpu(),
                    audio=audio[i].cpu(),
                    image_condition=None if condition is None else condition[i].cpu(),
                )
            outputs.append(
                ClipOutput(
                    frames=frames[i].numpy(),
                    audio=waveforms[i].numpy(),
                    sample_rate=config.sample_rate,
                    frame_fit=geometry.frame_fit,
                    timings=dict(per_clip),
                    latents=latents,
                )
            )
        return outputs

    def _text(self, prompts: list[str], negative_prompts: list[str | None] | None = None
              ) -> tuple[torch.Tensor, list[int], torch.Tensor | None, list[int] | None]:
        """(embeddings, lengths, negative-prompt embeddings and lengths under CFG) on this rank's device:
        rank 0 encodes (cached), the other ranks of a TP group receive them. A clip's own negative
        prompt replaces the preset's; the preset's is encoded once per replica."""
        encoded = None
        if self.text_encoder is not None:
            text, lens = self.text_encoder.encode_batch(prompts)
            null = None
            if self.preset.uses_cfg:
                nulls = [self.text_encoder.encode(n) if n else self.text_encoder.null_embedding()
                         for n in (negative_prompts or [None] * len(prompts))]
                null = (torch.stack([n.embedding for n in nulls]).cpu(), [n.length for n in nulls])
            encoded = (text.cpu(), lens.tolist(), null)
        if self.tp is not None:
            encoded = broadcast_from_rank0(encoded, self.tp)
        text, lens, null = encoded
        if null is None:
            return text.to(self.device), lens, None, None
        return text.to(self.device), lens, null[0].to(self.device), null[1]

    def _decode(self, video: torch.Tensor, audio: torch.Tensor,
                geometry: ClipGeometry) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(uint8 frames, waveforms) on rank 0, (None, None) on the others: every rank decodes its
        share of the video (parallel.split_decode); one rank decodes the audio first."""
        rate, tp = self.config.sample_rate, self.tp
        waveforms = None
        if tp is None or tp.rank == audio_rank(tp):
            waveforms = self.audio_vae.decode(audio, rate)[:, : geometry.audio_samples(rate)]
        frames = split_decode(self.video_decoder, video, tp)
        if tp is not None and tp.world_size > 1 and audio_rank(tp) != 0:
            gathered = gather_to_rank0(waveforms, tp)
            waveforms = None if gathered is None else gathered[audio_rank(tp)]
        return frames, waveforms

    def prepare_text(self, specs: list[ClipSpec]) -> None:
        """Encode a coming batch's prompts into the cache (on the rank holding the encoder), called
        while the replica still denoises the batch before, so that batch's text phase hits the cache."""
        if self.text_encoder is None:
            return
        for spec in specs:
            self.text_encoder.encode(spec.prompt)
        if self.preset.uses_cfg:
            self.text_encoder.null_embedding()

    def weight_bytes(self) -> dict[str, int]:
        """Bytes of the weights this rank holds, per component (model/memory.py predicts them)."""
        modules = {"dit": self.dit, **{SR_COMPONENT[r]: m for r, m in self._sr_dits.items()},
                   "video_vae": self.video_vae.vae, "audio_vae": self.audio_vae.vae}
        if self.text_encoder is not None:
            modules["text_encoder"] = self.text_encoder.model
        if isinstance(self.video_decoder, TurboVAED):
            modules["turbo_vae"] = self.video_decoder
        return {name: module_bytes(module) for name, module in modules.items()}

    def _initial_noise(
        self, generators: list[torch.Generator], geometry: ClipGeometry, latent_h: int, latent_w: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-clip starting noise from each clip's own generator seeded by the clip's seed, drawn
        audio first, then video, as the reference does (it seeds torch's global generator instead)."""
        video_shape = (VIDEO_LATENT_CHANNELS, geometry.latent_frames, latent_h, latent_w)
        audio_shape = (geometry.audio_latents, AUDIO_LATENT_CHANNELS)
        videos, audios = [], []
        for gen in generators:
            audios.append(torch.randn(audio_shape, generator=gen))
            videos.append(torch.randn(video_shape, generator=gen))
        return torch.stack(videos).to(self.device), torch.stack(audios).to(self.device)

    def _encode_images(self, images: list[Image.Image] | None, width: int, height: int) -> torch.Tensor | None:
        if images is None:
            return None
        return torch.cat([self.video_vae.encode_image(image, width, height) for image in images])

