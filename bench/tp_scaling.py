"""Tensor-parallel scaling of the DiT: one denoising step (a velocity call) at TP = 1, 2, 4.

CPU part: the `tiny` preset (optionally widened with --hidden-size) on a clip-sized token sequence,
each TP size run as that many gloo processes with --threads-per-rank threads each. Prints the
median step time, the speedup over TP=1 and the scaling efficiency t1 / (N * tN), measured side by
side in this run. The CPU figures measure the machinery (sharding, all-reduce cost), not GPU
behaviour: with fewer cores than N * threads the ranks share cores and efficiency falls for that
reason alone.

GPU part (when CUDA is present): the 15B architecture (magihuman-distill, random bf16 weights) at
TP=1 on one GPU, for a 5 s 256p clip. Multi-GPU TP figures need a multi-GPU machine; the output
says what was and was not measured. Writes bench/results/tp_scaling.json.

    python bench/tp_scaling.py [--tp 1 2 4] [--steps 5] [--hidden-size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.magihuman import PRESETS, load_dit  # noqa: E402
from model.magihuman.sizes import clip_geometry  # noqa: E402
from model.parallel import TPGroup  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "tp_scaling.json"


def clip_inputs(arch, latent_frames: int, latent_h: int, latent_w: int, audio: int, text: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(1, arch.latent_channels, latent_frames, latent_h, latent_w, generator=g),
        torch.randn(1, audio, arch.audio_in_channels, generator=g),
        torch.randn(1, text, arch.text_in_channels, generator=g),
    )


def time_steps(model, inputs, steps: int, sync) -> list[float]:
    video, audio, text = inputs
    model.velocity(video, audio, text, [text.shape[1]])  # warm-up
    times = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        model.velocity(video, audio, text, [text.shape[1]])
        sync()
        times.append(time.perf_counter() - start)
    return times


def cpu_rank(rank: int, world: int, store: str, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(args.threads_per_rank)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    arch = PRESETS["tiny"].replace(hidden_size=args.hidden_size) if args.hidden_size else PRESETS["tiny"]
    model = load_dit(None, tp=TPGroup(rank, world), arch=arch, compute_dtype=torch.float32)
    inputs = clip_inputs(arch, *args.latent, audio=args.audio, text=args.text)
    times = time_steps(model, inputs, args.steps, dist.barrier)
    if rank == 0:
        Path(out).write_text(json.dumps({"times": times, "bytes_read": model.load_report.bytes_read}))
    dist.barrier()
    dist.destroy_process_group()


def cpu_scaling(args: argparse.Namespace) -> list[dict]:
    rows = []
    for tp in args.tp:
        with tempfile.TemporaryDirectory() as tmp:
            out = f"{tmp}/result.json"
            mp.spawn(cpu_rank, args=(tp, f"{tmp}/store", args, out), nprocs=tp, join=True)
            result = json.loads(Path(out).read_text())
        rows.append({"tp": tp, "step_s": statistics.median(result["times"]), "rank_weight_bytes": result["bytes_read"]})
    base = rows[0]["step_s"] * rows[0]["tp"]
    for row in rows:
        row["speedup"] = rows[0]["step_s"] / row["step_s"]
        row["efficiency"] = base / (row["tp"] * row["step_s"])
    return rows


def gpu_15b_tp1(steps: int) -> dict:
    """One velocity step of the 15B DiT on one GPU for a 5 s 256p 16:9 clip (random bf16 weights)."""
    arch = PRESETS["magihuman-distill"]
    geometry = clip_geometry(5, "16:9", "256p")
    h, w = geometry.base_latent_hw
    model = load_dit(None, arch=arch, device="cuda", compute_dtype=torch.bfloat16)
    inputs = [t.cuda() for t in clip_inputs(arch, geometry.latent_frames, h, w, geometry.audio_latents, 640)]
    times = time_steps(model, inputs, steps, torch.cuda.synchronize)
    tokens = geometry.latent_frames * (h // 2) * (w // 2) + geometry.audio_latents + 640
    return {"tp": 1, "arch": "magihuman-distill", "tokens": tokens, "step_s": statistics.median(times),
            "device": torch.cuda.get_device_name(), "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tp", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per TP size (median reported)")
    parser.add_argument("--hidden-size", type=int, default=None, help="widen the tiny preset (multiple of 128)")
    parser.add_argument("--threads-per-rank", type=int, default=1)
    parser.add_argument("--latent", type=int, nargs=3, default=[9, 16, 28], metavar=("T", "H", "W"),
                        help="video latent frames, height, width (default: a 256p-class 1.3 s clip)")
    parser.add_argument("--audio", type=int, default=33, help="audio latents")
    parser.add_argument("--text", type=int, default=64, help="text tokens")
    args = parser.parse_args()
    if args.tp[0] != 1:
        args.tp = [1] + args.tp  # efficiency is measured against TP=1 in the same run

    cores = len(os.sched_getaffinity(0))
    tokens = args.latent[0] * (args.latent[1] // 2) * (args.latent[2] // 2) + args.audio + args.text
    width = args.hidden_size or PRESETS["tiny"].hidden_size
    print(f"CPU: {platform.processor() or platform.machine()}, {cores} cores available, "
          f"{args.threads_per_rank} thread(s) per rank; tiny preset at hidden {width}, {tokens} tokens per step")
    rows = cpu_scaling(args)
    print(f"{'TP':>3} {'step ms':>9} {'speedup':>8} {'efficiency':>10} {'weights/rank MB':>16}")
    for row in rows:
        print(f"{row['tp']:>3} {row['step_s'] * 1e3:>9.1f} {row['speedup']:>8.2f} {row['efficiency']:>10.0%} "
              f"{row['rank_weight_bytes'] / 1e6:>16.2f}")
    if max(args.tp) * args.threads_per_rank > cores:
        print(f"note: TP={max(args.tp)} x {args.threads_per_rank} thread(s) exceeds the {cores} cores here; "
              "those ranks share cores, which alone caps their efficiency")

    gpu = None
    if torch.cuda.is_available():
        gpu = gpu_15b_tp1(args.steps)
        print(f"GPU {gpu['device']}: 15B DiT at TP=1, {gpu['tokens']} tokens (5 s 256p): "
              f"{gpu['step_s'] * 1e3:.0f} ms per step, peak {gpu['peak_memory_gib']:.1f} GiB")
    else:
        print("GPU: none on this machine, so the 15B TP=1 step time was not measured; "
              "multi-GPU TP=2/4/8 figures for the 15B model remain a plan (run this script on a GPU node).")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "cores": cores, "threads_per_rank": args.threads_per_rank,
        "hidden_size": width, "tokens": tokens, "cpu": rows, "gpu_15b_tp1": gpu,
    }, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
