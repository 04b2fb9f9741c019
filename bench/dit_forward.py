"""DiT forward speed: seconds per denoising step (one forward of the DiT) and achieved FLOP/s.

Measures the tiny preset on the CPU, and the 15B preset (random bf16 weights) on a CUDA GPU when
one is present, on a 5 s clip at base 256p (latent 32 x 16 x 28 -> 3584 video tokens, 126 audio
latents) with a 256-token prompt. FLOPs count multiply-adds as 2 in every matmul: the linear
layers, the adapter and final projections, and attention's QK^T and PV over the key pairs each
query may see. Prints the figures and writes them to bench/results/dit_forward.json.

    python bench/dit_forward.py [--repeats 3] [--text-len 256] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.magihuman import PRESETS, ArchConfig, MagiHumanDiT, load_dit  # noqa: E402
from model.magihuman.dit import TokenLayout  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "dit_forward.json"
FPS = 25


def clip_layout(seconds: int, height: int, width: int, text_len: int) -> tuple[TokenLayout, tuple[int, ...]]:
    """Token layout and video latent shape of one clip: VAE stride 4x16x16, 1x2x2 patches, one audio latent per frame."""
    audio = seconds * FPS + 1
    latent = (48, (audio - 1) // 4 + 1, height // 16, width // 16)
    layout = TokenLayout(
        num_frames=latent[1], tokens_per_frame=(latent[2] // 2) * (latent[3] // 2), num_audio=audio, text_lens=(text_len,)
    )
    return layout, latent


def attention_pairs(layout: TokenLayout, frame_receptive_field: int) -> int:
    """(query, key) pairs one sample computes: all of them, or for frame-local layers video queries
    see 2 * field + 1 frames of video (fewer at the clip ends) plus all audio and text."""
    s, nv = layout.seq_len, layout.num_video
    if frame_receptive_field < 0:
        return s * s
    t, f = layout.num_frames, frame_receptive_field
    video_frames_seen = sum(min(t - 1, i + f) - max(0, i - f) + 1 for i in range(t))
    return video_frames_seen * layout.tokens_per_frame**2 + nv * (s - nv) + (s - nv) * s


def forward_flops(arch: ArchConfig, layout: TokenLayout, frame_receptive_field: int) -> int:
    s, d, hidden = layout.seq_len, arch.head_dim, arch.hidden_size
    hq, hkv = arch.num_heads_q, arch.num_heads_kv
    qkv_out = (hq + 2 * hkv) * d + (hq if arch.enable_attn_gating else 0)
    flops = 2 * hidden * (layout.num_video * arch.video_in_channels * 2 + layout.num_audio * arch.audio_in_channels * 2)
    flops += 2 * hidden * layout.num_text * arch.text_in_channels
    for i in range(arch.num_layers):
        inter = arch.mlp_intermediate_size(i)
        up = inter * (1 if i in arch.gelu7_layers else 2)
        flops += 2 * s * hidden * (qkv_out + hq * d + up) + 2 * s * inter * hidden
        field = frame_receptive_field if i in arch.local_attn_layers else -1
        flops += 4 * attention_pairs(layout, field) * hq * d
    return flops * layout.batch_size


def build(arch: ArchConfig | str, device: torch.device) -> MagiHumanDiT:
    """A DiT of `arch` (or a preset's name) with random weights on `device`."""
    arch = PRESETS[arch] if isinstance(arch, str) else arch
    if device.type == "cpu":
        return load_dit(None, arch=arch, device=device)
    with torch.device("meta"):  # random weights drawn on the GPU: 15B on the CPU would take minutes
        model = MagiHumanDiT(arch)
    model.to_empty(device=device).eval().requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02) if p.dim() == 2 else p.zero_()
    model.adapter.rope.reset_bands()
    return model


def measure(preset: str, device: torch.device, seconds: int, text_len: int, repeats: int) -> dict:
    arch = PRESETS[preset]
    layout, latent = clip_layout(seconds, 256, 448, text_len)
    flops = forward_flops(arch, layout, arch.frame_receptive_field)
    model = build(preset, device)
    g = torch.Generator().manual_seed(0)
    video = torch.randn(1, *latent, generator=g).to(device)
    audio = torch.randn(1, layout.num_audio, arch.audio_in_channels, generator=g).to(device)
    text = torch.randn(1, text_len, arch.text_in_channels, generator=g).to(device)

    def step():
        model.velocity(video, audio, text, [text_len])
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: kernel selection, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    best = min(times)
    return {
        "preset": preset,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "measured": True,
        "clip": {"seconds": seconds, "height": 256, "width": 448, "latent": list(latent)},
        "tokens": {"video": layout.num_video, "audio": layout.num_audio, "text": text_len, "total": layout.seq_len},
        "compute_dtype": str(model.compute_dtype),
        "flops_per_forward": flops,
        "seconds_per_forward": best,
        "seconds_per_forward_all": times,
        "flops_per_second": flops / best,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--text-len", type=int, default=256)
    args = parser.parse_args(argv)

    results = [measure("tiny", torch.device("cpu"), args.seconds, args.text_len, args.repeats)]
    big = "magihuman-distill"
    if torch.cuda.is_available():
        results.append(measure(big, torch.device("cuda"), args.seconds, args.text_len, args.repeats))
    else:
        layout, _ = clip_layout(args.seconds, 256, 448, args.text_len)
        results.append({
            "preset": big,
            "device": "cuda",
            "measured": False,
            "reason": "no CUDA GPU in this run; the 15B figure is not measured here",
            "tokens": {"video": layout.num_video, "audio": layout.num_audio, "text": args.text_len, "total": layout.seq_len},
            "flops_per_forward": forward_flops(PRESETS[big], layout, PRESETS[big].frame_receptive_field),
        })

    for r in results:
        tokens = r["tokens"]
        head = f"{r['preset']:<18} {r['device']:<24} tokens {tokens['total']} (video {tokens['video']}, audio {tokens['audio']}, text {tokens['text']})"
        if r["measured"]:
            print(f"{head}: {r['seconds_per_forward'] * 1e3:.1f} ms/step, "
                  f"{r['flops_per_forward'] / 1e9:.1f} GFLOP/forward assumed, {r['flops_per_second'] / 1e9:.1f} GFLOP/s achieved")
        else:
            print(f"{head}: not measured ({r['reason']}); {r['flops_per_forward'] / 1e12:.1f} TFLOP/forward assumed")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(f"wrote {RESULTS}")
    return results


if __name__ == "__main__":
    main()
