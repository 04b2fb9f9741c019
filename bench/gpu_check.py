"""One GPU check: the full-size stack on one GPU, beside the reference's published H100 figures.

On a CUDA machine, with random weights at the released shapes in bf16, for a 5 s 16:9 clip:
  1. the 15B DiT per denoising step at the token counts of 256p (base, 448x256), 540p SR (896x512)
     and 1080p SR (1920x1088, frame-local attention), with achieved TFLOP/s and peak memory;
  2. TurboVAED and the full Wan2.2 decoder at each of those sizes;
  3. one whole 256p clip through the full-size stack (T5Gemma-9B-class encoder, 8 distilled
     steps, TurboVAED, Oobleck audio VAE), phase by phase.
Random weights time the real kernels at the real shapes; the pictures are noise. Without CUDA it
runs the same code on the tiny preset on the CPU, so it never rots, and says the GPU figures are
not measured. Prints a table and writes bench/results/gpu_check.json. About 5 minutes on one H200.

    python bench/gpu_check.py [--seconds 5] [--text-len 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.dit_forward import build as build_dit, forward_flops  # noqa: E402
from model.magihuman import ArchConfig, denoise  # noqa: E402
from model.magihuman.audio_vae import AudioVAE, TinyOobleckConfig  # noqa: E402
from model.magihuman.config import PRESETS as ARCH_PRESETS  # noqa: E402
from model.magihuman.dit import TokenLayout  # noqa: E402
from model.magihuman.sizes import BASE_SIZES, SR_SIZES, clip_geometry  # noqa: E402
from model.magihuman.text_encoder import TextEncoder, byte_level_tokenizer, tiny_t5gemma_encoder  # noqa: E402
from model.magihuman.turbo_vae import TurboVAED, TurboVAEDConfig  # noqa: E402
from model.magihuman.video_vae import VideoVAE  # noqa: E402
from model.presets import NEGATIVE_PROMPT, OOBLECK_RELEASED, T5GEMMA_9B, T5GEMMA_VOCAB, WAN22_VAE, get_preset  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_check.json"
SIZES = ("256p", "540p", "1080p")
SR_STEPS, BASE_STEPS = 5, 8

# The reference's published figures for a 5 s clip on one H100 (README): seconds per clip.
REFERENCE_H100 = {
    "256p": {"total": 2.0, "dit": 1.6, "decode": 0.4},
    "540p": {"total": 8.0},
    "1080p": {"total": 38.4, "base": 1.6, "super_resolution": 31.0, "decode": 5.8},
}

@dataclass(frozen=True)
class Stack:
    """What to build: the released shapes on a GPU, or the tiny preset on the CPU."""

    name: str
    device: torch.device
    dtype: torch.dtype
    archs: dict[str, ArchConfig]  # 256p: the base DiT; 540p / 1080p: the SR DiTs
    sizes: dict[str, tuple[int, int]]  # (width, height) each DiT generates at

    @property
    def full_size(self) -> bool:
        return self.name == "full-size"

    def text_encoder(self) -> TextEncoder:
        if not self.full_size:
            return TextEncoder.tiny(NEGATIVE_PROMPT, device=self.device)
        tokenizer = byte_level_tokenizer()  # ids only; the weights are random anyway
        model = on_device(lambda: tiny_t5gemma_encoder(T5GEMMA_9B, vocab_size=T5GEMMA_VOCAB), self.device)
        return TextEncoder(model, tokenizer, NEGATIVE_PROMPT, device=self.device, dtype=self.dtype)

    def turbo_vae(self) -> TurboVAED:
        if not self.full_size:
            return TurboVAED.tiny(get_preset("tiny").tiny.turbo_vae, device=self.device)
        return on_device(lambda: TurboVAED(TurboVAEDConfig()), self.device).to(self.dtype).eval().requires_grad_(False)

    def full_vae(self) -> VideoVAE:
        if not self.full_size:
            return VideoVAE.tiny(device=self.device)
        from diffusers import AutoencoderKLWan

        return VideoVAE(on_device(lambda: AutoencoderKLWan(**WAN22_VAE), self.device), device=self.device, dtype=self.dtype)

    def audio_vae(self) -> AudioVAE:
        return AudioVAE.tiny(OOBLECK_RELEASED if self.full_size else TinyOobleckConfig(), device=self.device)


def full_size_stack(device: torch.device) -> Stack:
    archs = {"256p": ARCH_PRESETS["magihuman-distill"], "540p": ARCH_PRESETS["magihuman-sr-540p"], "1080p": ARCH_PRESETS["magihuman-sr-1080p"]}
    sizes = {"256p": BASE_SIZES["16:9"], "540p": SR_SIZES["540p"]["16:9"], "1080p": SR_SIZES["1080p"]["16:9"]}
    return Stack("full-size", device, torch.bfloat16, archs, sizes)


def tiny_stack() -> Stack:
    preset = get_preset("tiny")
    sizes = {"256p": preset.base_sizes["16:9"], **{r: preset.sr_sizes[r]["16:9"] for r in ("540p", "1080p")}}
    return Stack("tiny", torch.device("cpu"), torch.float32, {"256p": preset.dit_arch, **preset.sr_archs}, sizes)


def on_device(build: Callable[[], torch.nn.Module], device: torch.device) -> torch.nn.Module:
    """Build straight on the device: its default init runs there (9B parameters on the CPU would take minutes)."""
    with torch.device(device):
        return build()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def latent_shape(stack: Stack, size: str, seconds: int) -> tuple[int, ...]:
    """[1, 48, T, h, w] as the generator makes it for a clip of `seconds` at `size`."""
    width, height = stack.sizes[size]
    return (1, 48, clip_geometry(seconds, "16:9", "256p").latent_frames, height // 16, width // 16)


def audio_latents(seconds: int) -> int:
    return clip_geometry(seconds, "16:9", "256p").audio_latents


def measure_dit(stack: Stack, size: str, seconds: int, text_len: int, repeats: int) -> dict:
    arch, (width, height) = stack.archs[size], stack.sizes[size]
    latent = latent_shape(stack, size, seconds)
    layout = TokenLayout(latent[2], (latent[3] // 2) * (latent[4] // 2), audio_latents(seconds), (text_len,))
    flops = forward_flops(arch, layout, arch.frame_receptive_field)
    model = build_dit(arch, stack.device)
    g = torch.Generator().manual_seed(0)
    video = torch.randn(latent, generator=g).to(stack.device)
    audio = torch.randn(1, layout.num_audio, arch.audio_in_channels, generator=g).to(stack.device)
    text = torch.randn(1, text_len, arch.text_in_channels, generator=g).to(stack.device)
    reset_peak(stack.device)
    _, warmup = timed(lambda: model.velocity(video, audio, text, [text_len]), stack.device)  # kernels, compile
    times = [timed(lambda: model.velocity(video, audio, text, [text_len]), stack.device)[1] for _ in range(repeats)]
    result = {
        "size": size, "generated_at": [width, height], "tokens": layout.seq_len, "video_tokens": layout.num_video,
        "frame_receptive_field": arch.frame_receptive_field, "first_step_s": warmup, "step_s": min(times),
        "step_s_all": times, "flops_per_step": flops, "tflops_per_s": flops / min(times) / 1e12, "peak_gib": peak_gib(stack.device),
    }
    del model
    reset_peak(stack.device)
    return result


def measure_decoders(stack: Stack, seconds: int) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    results = []
    for name, make in (("turbo", stack.turbo_vae), ("full", stack.full_vae)):
        decoder = make()
        warm = torch.randn(latent_shape(stack, "256p", seconds), generator=g)
        timed(lambda: decoder.decode(warm), stack.device)  # cuDNN algorithm search
        for size in SIZES:
            latent = torch.randn(latent_shape(stack, size, seconds), generator=g)
            reset_peak(stack.device)
            frames, elapsed = timed(lambda: decoder.decode(latent), stack.device)
            results.append({"decoder": name, "size": size, "frames": list(frames.shape[1:]), "decode_s": elapsed,
                            "peak_gib": peak_gib(stack.device)})
        del decoder
        reset_peak(stack.device)
    return results


def measure_clip(stack: Stack, seconds: int, text_len: int) -> dict:
    """A whole 256p clip, phase by phase, the second of two (the first warms kernels up)."""
    text_encoder, dit = stack.text_encoder(), build_dit(stack.archs["256p"], stack.device)
    turbo, audio_vae = stack.turbo_vae(), stack.audio_vae()
    shape = latent_shape(stack, "256p", seconds)
    reset_peak(stack.device)
    for run in range(2):
        phases = {}
        prompt = f"take {run}: " + "a presenter smiles at the camera and waves. " * (text_len // 44 + 1)
        (text, lens), phases["text"] = timed(lambda: text_encoder.encode_batch([prompt[: text_len - 1]]), stack.device)
        g = torch.Generator().manual_seed(run)
        video = torch.randn(shape, generator=g).to(stack.device)
        audio = torch.randn(1, audio_latents(seconds), 64, generator=g).to(stack.device)
        (video, audio), phases["denoise"] = timed(
            lambda: denoise(dit, video, audio, text, lens.tolist(), steps=BASE_STEPS, mode="distill", generator=[g]), stack.device
        )
        _, phases["video_decode"] = timed(lambda: turbo.decode(video), stack.device)
        _, phases["audio_decode"] = timed(lambda: audio_vae.decode(audio, 44100), stack.device)
    peak = peak_gib(stack.device)
    del text_encoder, dit, turbo, audio_vae
    reset_peak(stack.device)
    return {"text_tokens": int(lens[0]), "phases_s": phases, "total_s": sum(phases.values()), "peak_gib": peak}


def estimates(dit: list[dict], decode: list[dict], clip: dict) -> dict:
    """Per-clip seconds assembled from the measured parts (the 256p clip is also measured whole)."""
    step = {r["size"]: r["step_s"] for r in dit}
    turbo = {r["size"]: r["decode_s"] for r in decode if r["decoder"] == "turbo"}
    base = BASE_STEPS * step["256p"]
    return {
        "256p": {"dit": base, "decode": turbo["256p"], "total": base + turbo["256p"], "whole_clip_measured": clip["total_s"]},
        **{size: {"base": base, "super_resolution": SR_STEPS * step[size], "decode": turbo[size],
                  "total": base + SR_STEPS * step[size] + turbo[size]} for size in ("540p", "1080p")},
    }


def report(result: dict) -> str:
    gpu = result["gpu_measured"]
    where = result["device"] if gpu else f"{result['device']} (tiny preset; GPU figures NOT measured: {result['reason']})"
    lines = [f"gpu_check on {where}, {result['seconds']} s 16:9 clip", "",
             f"{'DiT step':<12}{'tokens':>8}{'s/step':>10}{'TFLOP/s':>10}{'peak GiB':>10}{'first step s':>14}"]
    for r in result["dit"]:
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        lines.append(f"{r['size']:<12}{r['tokens']:>8}{r['step_s']:>10.3f}{r['tflops_per_s']:>10.3g}{peak:>10}{r['first_step_s']:>14.1f}")
    lines += ["", f"{'decode':<12}{'size':>8}{'seconds':>10}{'peak GiB':>10}"]
    for r in result["decode"]:
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        lines.append(f"{r['decoder']:<12}{r['size']:>8}{r['decode_s']:>10.2f}{peak:>10}")
    clip = result["clip_256p"]
    lines += ["", "whole 256p clip: " + ", ".join(f"{k} {v:.2f} s" for k, v in clip["phases_s"].items()) + f" = {clip['total_s']:.2f} s"]
    lines += ["", f"{'per clip (s)':<12}{'part':<18}{'measured':>10}{'ref H100':>10}"]
    for size, parts in result["estimates"].items():
        for part, seconds in parts.items():
            ref = REFERENCE_H100[size].get("total" if part == "whole_clip_measured" else part)
            lines.append(f"{size:<12}{part:<18}{seconds:>10.2f}{(f'{ref:.1f}' if ref is not None else '-'):>10}")
    if not gpu:
        lines.append("(CPU tiny-preset figures: they check the code runs, they are not comparable to the H100 column)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--text-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    gpu = torch.cuda.is_available()
    stack = full_size_stack(torch.device("cuda")) if gpu else tiny_stack()
    started = time.perf_counter()
    dit = [measure_dit(stack, size, args.seconds, args.text_len, args.repeats if gpu else 1) for size in SIZES]
    decode = measure_decoders(stack, args.seconds)
    clip = measure_clip(stack, args.seconds, args.text_len)
    result = {
        "gpu_measured": gpu,
        "reason": None if gpu else "no CUDA device in this run",
        "device": torch.cuda.get_device_name() if gpu else f"cpu ({torch.get_num_threads()} threads)",
        "stack": stack.name, "dtype": str(stack.dtype), "seconds": args.seconds, "text_len": args.text_len,
        "dit": dit, "decode": decode, "clip_256p": clip, "estimates": estimates(dit, decode, clip),
        "reference_h100": REFERENCE_H100, "wall_s": time.perf_counter() - started,
    }
    print(report(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.output} ({result['wall_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
