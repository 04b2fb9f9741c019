"""Memory per rank of one replica, from the architecture alone: no weights on disk, nothing allocated.

Weights: every component is built on the meta device exactly as a rank builds it (the DiTs through
model/parallel.py's plan for that rank; the text encoder on rank 0 only, on the GPU or kept on the
host with `text_encoder_device="cpu"`; the VAEs on every rank, since each decodes its share), and
its parameters and buffers are counted in the dtypes the generator keeps them in. For the tiny
preset these are the bytes AVGenerator.weight_bytes() reports per rank (tests/integration).

Activations: an estimate, per rank and clip, of the largest transient set of tensors:
- DiT forward (batch 1, CFG doubles it): the residual stream, its normed copy, the fp32
  all-reduce buffer and the layer output, plus this rank's widest projection output (qkv+gate, or
  the MLP's up projection with its activation), all over the clip's tokens;
- TurboVAED: one sliding window (7 latent frames + 2 of context): the widest stage's input, output
  and fp32 upsampling copy;
- the text encoder's forward on 640 tokens, where rank 0 holds it on the GPU.
Peak = weights + the larger of DiT and decode + text + CONTEXT_BYTES (CUDA context, allocator slack).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import torch

from .magihuman.config import ArchConfig, resolve_arch
from .magihuman.dit import MagiHumanDiT
from .magihuman.sizes import TEXT_LENGTH
from .magihuman.turbo_vae import TurboVAEDConfig
from .parallel import TPGroup, check_tp_size, parallelize_dit
from .presets import SR_COMPONENT, get_preset

GPU_SIZES_GB = (24, 40, 48, 80, 141)  # nominal card sizes; a card of N GB holds about N GiB
RESOLUTIONS = ("256p", "540p", "720p", "1080p")
DURATIONS_S = (5, 15)
CONTEXT_BYTES = int(1.5 * 2**30)
TP_SIZES = (1, 2, 4, 8)


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (meta tensors count as their shape says)."""
    return sum(t.numel() * t.element_size() for t in chain(module.parameters(), module.buffers()))


def sr_arch_for(preset, resolution: str) -> ArchConfig:
    """The SR DiT serving `resolution`; 720p has no model of its own in the presets: the 1080p one's shape."""
    return resolve_arch(preset.sr_archs.get(resolution, preset.sr_archs["1080p"]))


def dit_bytes(arch: ArchConfig, compute_dtype: torch.dtype, tp: TPGroup) -> int:
    with torch.device("meta"):
        model = MagiHumanDiT(arch, compute_dtype=compute_dtype)
        if tp.world_size > 1:
            parallelize_dit(model, tp)
    return module_bytes(model)


def component_bytes(config) -> dict[str, int]:
    """Bytes of the text encoder and the VAEs of `config` (a GeneratorConfig), each built on the meta
    device by the same wrappers the generator loads them with."""
    from diffusers import AutoencoderKLWan, AutoencoderOobleck
    from diffusers.utils import logging as diffusers_logging

    from .magihuman.audio_vae import AudioVAE
    from .magihuman.text_encoder import TextEncoder, byte_level_tokenizer, tiny_t5gemma_encoder
    from .magihuman.turbo_vae import TurboVAED
    from .magihuman.video_vae import VideoVAE
    from .presets import OOBLECK_RELEASED, T5GEMMA_9B, T5GEMMA_VOCAB, WAN22_VAE

    preset, dtype, meta = get_preset(config.model), config.torch_dtype(), torch.device("meta")
    try:
        turbo = config.video_decoder() == "turbo"
    except ValueError:  # no weights folder to look in: "auto" counts the reference's decoder, TurboVAED
        turbo = config.decoder != "full"
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its bf16-cast advice, about weights that are not there
    with meta:
        if preset.tiny is not None:
            tiny = preset.tiny
            modules = {
                "text_encoder": TextEncoder.tiny(preset.negative_prompt, tiny.text_encoder, device=meta).model,
                "video_vae": VideoVAE.tiny(tiny.video_vae, device=meta).vae,
                "audio_vae": AudioVAE.tiny(tiny.audio_vae, device=meta).vae,
                **({"turbo_vae": TurboVAED.tiny(tiny.turbo_vae, device=meta)} if turbo else {}),
            }
        else:
            encoder = tiny_t5gemma_encoder(T5GEMMA_9B, vocab_size=T5GEMMA_VOCAB)
            oobleck = OOBLECK_RELEASED
            audio = AutoencoderOobleck(encoder_hidden_size=oobleck.encoder_hidden_size, downsampling_ratios=[2, 4, 4, 8, 8],
                                       channel_multiples=list(oobleck.channel_multiples), decoder_channels=oobleck.decoder_channels,
                                       decoder_input_channels=64, audio_channels=2, sampling_rate=44100)
            modules = {
                "text_encoder": TextEncoder(encoder, byte_level_tokenizer(), "", device=meta, dtype=dtype).model,
                "video_vae": VideoVAE(AutoencoderKLWan(**WAN22_VAE), device=meta, dtype=dtype).vae,
                "audio_vae": AudioVAE(audio, device=meta, dtype=torch.float32).vae,
                **({"turbo_vae": TurboVAED(TurboVAEDConfig()).to(meta, dtype)} if turbo else {}),
            }
    diffusers_logging.set_verbosity(verbosity)
    return {name: module_bytes(module) for name, module in modules.items()}


@dataclass(frozen=True)
class RankMemory:
    """What one rank holds: weights on its device per component, and what stays on the host."""

    rank: int
    device_bytes: dict[str, int]
    host_bytes: dict[str, int]

    def weights(self, resolution: str | None = None) -> int:
        """Device bytes; with `resolution`, only the SR DiT that resolution loads (on first use)."""
        return sum(b for name, b in self.device_bytes.items()
                   if resolution is None or not name.startswith("sr_") or name == sr_component(resolution))


def sr_component(resolution: str) -> str | None:
    return None if resolution == "256p" else SR_COMPONENT.get(resolution, "sr_1080p")


def replica_memory(config, tp_size: int) -> list[RankMemory]:
    """Per rank of a `tp_size` replica of `config` (a GeneratorConfig): the bytes it will hold."""
    preset = get_preset(config.model)
    arch = resolve_arch(preset.dit_arch)
    check_tp_size(arch, tp_size)
    dtype = config.torch_dtype()
    shared = component_bytes(config)
    text = shared.pop("text_encoder")
    text_on_host = config.text_encoder_device == "cpu" and not config.device.startswith("cpu")
    sr = sorted({sr_component(r) for r in config.sr_resolutions} - {None})
    ranks = []
    for rank in range(tp_size):
        tp = TPGroup(rank, tp_size)
        device = {"dit": dit_bytes(arch, dtype, tp)}
        device |= {name: dit_bytes(sr_arch_for(preset, name.removeprefix("sr_")), dtype, tp) for name in sr}
        host = {}
        if rank == 0:
            (host if text_on_host else device)["text_encoder"] = text
        ranks.append(RankMemory(rank, device | shared, host))
    return ranks


def _bytes_per(dtype: torch.dtype) -> int:
    return torch.tensor([], dtype=dtype).element_size()


def dit_activation_bytes(arch: ArchConfig, tokens: int, tp_size: int, dtype: torch.dtype, batch: int = 1) -> int:
    e = _bytes_per(dtype)
    hidden, d, hq, hkv = arch.hidden_size, arch.head_dim, arch.num_heads_q, arch.num_heads_kv
    kv_rank = max(hkv // tp_size, 1)
    qkv = (hq // tp_size) * d + 2 * kv_rank * d + hq // tp_size
    widest = max(2 * arch.mlp_intermediate_size(i) // tp_size * 1.5 if i not in arch.gelu7_layers
                 else arch.mlp_intermediate_size(i) // tp_size * 2 for i in range(arch.num_layers))
    per_token = 3 * hidden * e + 4 * hidden + max(2 * qkv * e, widest * e)
    return int(batch * tokens * per_token)


def turbo_window_bytes(cfg: TurboVAEDConfig, latent_h: int, latent_w: int, dtype: torch.dtype) -> int:
    t, h, w = cfg.step_size + 2, latent_h, latent_w
    widths = cfg.decoder_block_out_channels[::-1]
    largest = widths[0] * t * h * w
    for i, (scale, spatio_only) in enumerate(zip(cfg.decoder_spatio_temporal_scaling[::-1], cfg.decoder_spatio_only[::-1])):
        largest = max(largest, widths[max(i - 1, 0)] * t * h * w, widths[i] * t * h * w)
        if scale:
            h, w, t = 2 * h, 2 * w, t if spatio_only else 2 * t
            largest = max(largest, widths[i] * t * h * w)
    return largest * (2 * _bytes_per(dtype) + 4)


def text_activation_bytes(dtype: torch.dtype, hidden: int, intermediate: int) -> int:
    return TEXT_LENGTH * (4 * hidden + 3 * intermediate) * _bytes_per(dtype)


@dataclass(frozen=True)
class ClipPeak:
    resolution: str
    duration_s: int
    dit_bytes: int
    decode_bytes: int
    peak_bytes: int  # the heaviest rank
    rank: int  # which rank that is

    def fits(self, gpu_gb: float) -> bool:
        return self.peak_bytes <= gpu_gb * 2**30


def clip_peaks(config, tp_size: int, ranks: list[RankMemory] | None = None,
               resolutions=RESOLUTIONS, durations=DURATIONS_S) -> list[ClipPeak]:
    """The estimated peak device memory of the heaviest rank per (resolution, duration), 16:9."""
    from .presets import T5GEMMA_9B

    preset = get_preset(config.model)
    dtype = config.torch_dtype()
    ranks = ranks or replica_memory(config, tp_size)
    turbo = preset.tiny.turbo_vae if preset.tiny is not None else TurboVAEDConfig()
    encoder = preset.tiny.text_encoder if preset.tiny is not None else T5GEMMA_9B
    text = text_activation_bytes(dtype, encoder.hidden_size, encoder.intermediate_size)
    peaks = []
    for resolution in resolutions:
        for duration in durations:
            g = preset.geometry(duration, "16:9", resolution)
            passes = [(resolve_arch(preset.dit_arch), g.base_latent_hw, 2 if preset.uses_cfg else 1)]
            if g.sr_latent_hw is not None:
                passes.append((sr_arch_for(preset, resolution), g.sr_latent_hw, 1))
            dit = max(dit_activation_bytes(arch, g.pass_tokens(hw) + TEXT_LENGTH, tp_size, dtype, batch)
                      for arch, hw, batch in passes)
            decode = turbo_window_bytes(turbo, *(g.sr_latent_hw or g.base_latent_hw), dtype)
            per_rank = [r.weights(resolution) + max(dit, decode) + CONTEXT_BYTES
                        + (text if "text_encoder" in r.device_bytes else 0) for r in ranks]
            heaviest = max(range(len(ranks)), key=per_rank.__getitem__)
            peaks.append(ClipPeak(resolution, duration, dit, decode, per_rank[heaviest], heaviest))
    return peaks


def smallest_fitting_tp(config, gpu_bytes: float, resolutions, durations=(15,)) -> int | None:
    """The smallest TP size whose every rank fits `gpu_bytes` at `resolutions`, or None."""
    arch = resolve_arch(get_preset(config.model).dit_arch)
    for tp in TP_SIZES:
        try:
            check_tp_size(arch, tp)
        except ValueError:
            continue
        if all(p.peak_bytes <= gpu_bytes for p in clip_peaks(config, tp, resolutions=resolutions, durations=durations)):
            return tp
    return None


def check_replica_fits(config, tp_size: int, gpu_bytes: float, resolutions, durations=(15,)) -> None:
    """Raise ValueError in one line, naming the smallest TP that fits, when a rank would not fit."""
    too_big = [p for p in clip_peaks(config, tp_size, resolutions=resolutions, durations=durations)
               if p.peak_bytes > gpu_bytes]
    if not too_big:
        return
    worst = max(too_big, key=lambda p: p.peak_bytes)
    smallest = smallest_fitting_tp(config, gpu_bytes, resolutions, durations)
    fix = (f"use --tp {smallest}, the smallest that fits" if smallest else "no TP size up to 8 fits: use larger GPUs")
    if config.text_encoder_device != "cpu":
        fix += ", or --text-encoder-device cpu"
    raise ValueError(
        f"--tp {tp_size}: a {config.model} replica needs about {worst.peak_bytes / 1e9:.1f} GB on rank {worst.rank} "
        f"at {worst.resolution} {worst.duration_s} s and these GPUs hold {gpu_bytes / 1e9:.1f} GB; {fix}"
    )
