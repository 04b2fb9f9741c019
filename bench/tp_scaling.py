"""Tensor-parallel scaling of the DiT: one denoising step (a velocity call) at TP = 1, 2, 4.

CPU part: the `tiny` preset (optionally widened with --hidden-size) on a clip-sized token sequence,
each TP size run as that many gloo processes with --threads-per-rank threads each. Prints the
median step time, the speedup over TP=1 and the scaling efficiency t1 / (N * tN), measured side by
side in this run. The CPU figures measure the machinery (sharding, all-reduce cost), not GPU
behaviour: with fewer cores than N * threads the ranks share cores and efficiency falls for that
reason alone.

Clip part: the whole tiny stack (AVGenerator) makes one clip at each TP size on gloo: the DiT step
time, the text encoding (rank 0 alone), the decode split across the ranks and, side by side on the
same latents, rank 0 decoding the whole clip alone (no split), and the share of the clip's wall
time each rank was computing (denoise, its decode items, the audio decode) rather than waiting
for the others. On a CPU these are the machinery's figures; "GPU busy" needs CUDA.

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

from model.generator import AVGenerator, ClipSpec, GeneratorConfig  # noqa: E402
from model.magihuman import PRESETS, load_dit  # noqa: E402
from model.magihuman.sizes import clip_geometry  # noqa: E402
from model.parallel import TPGroup, split_decode  # noqa: E402
from model.presets import get_preset  # noqa: E402

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


class Timed:
    """Wraps a method to add its wall time to `spent` (bench instrumentation)."""

    def __init__(self, fn, spent: list[float]):
        self.fn, self.spent = fn, spent

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.spent.append(time.perf_counter() - start)


def clip_rank(rank: int, world: int, store: str, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(args.threads_per_rank)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    tp = TPGroup(rank, world)
    generator = AVGenerator(GeneratorConfig(model="tiny", sr_resolutions=(), return_latents=True), tp)
    spec = ClipSpec("A presenter holds the product and smiles.", args.clip_seconds, seed=1)
    generator.generate([ClipSpec("warm-up", 2)])
    busy: list[float] = []
    decoder, audio_vae = generator.video_decoder, generator.audio_vae
    decoder.decode_items = Timed(decoder.decode_items, busy)
    decoder.decode = Timed(decoder.decode, busy)  # what split_decode calls at TP=1
    audio_vae.decode = Timed(audio_vae.decode, busy)
    dist.barrier()
    start = time.perf_counter()
    clips = generator.generate([spec])
    wall = time.perf_counter() - start
    busy_s = sum(busy)
    timings = clips[0].timings if rank == 0 else {}
    latents = clips[0].latents.video[None] if rank == 0 else None
    latents = torch.zeros(0) if latents is None else latents
    shape = [list(latents.shape)]
    dist.broadcast_object_list(shape, src=0)
    if rank:
        latents = torch.zeros(shape[0])
    dist.broadcast(latents, src=0)
    # Side by side, best of two each: the split decode again, then rank 0 alone decoding the whole clip.
    split_s, alone_s = float("inf"), None
    for _ in range(2):
        dist.barrier()
        t0 = time.perf_counter()
        split_decode(decoder, latents, tp)
        split_s = min(split_s, time.perf_counter() - t0)
        dist.barrier()
        if rank == 0:
            t0 = time.perf_counter()
            decoder.decode(latents)
            alone_s = min(alone_s or float("inf"), time.perf_counter() - t0)
        dist.barrier()
    result = {"rank": rank, "wall_s": wall, "busy_s": busy_s, "timings": timings, "split_decode_s": split_s,
              "alone_decode_s": alone_s}
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(result, gathered, dst=0)
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
    dist.barrier()
    dist.destroy_process_group()


def clip_scaling(args: argparse.Namespace) -> list[dict]:
    """Per TP size, one tiny clip: phases, decode with and without the split, per-rank busy share."""
    rows = []
    steps = get_preset("tiny").steps
    for tp in args.tp:
        with tempfile.TemporaryDirectory() as tmp:
            out = f"{tmp}/clip.json"
            mp.spawn(clip_rank, args=(tp, f"{tmp}/store", args, out), nprocs=tp, join=True)
            ranks = json.loads(Path(out).read_text())
        rank0 = ranks[0]
        wall = rank0["wall_s"]
        # Busy per rank: its denoise (every rank computes the DiT in lockstep) + its own decode work.
        busy = [(rank0["timings"]["denoise"] + r["busy_s"]) / wall for r in ranks]
        split, alone = max(r["split_decode_s"] for r in ranks), rank0["alone_decode_s"]
        rows.append({
            "tp": tp, "clip_wall_s": wall, "dit_step_s": rank0["timings"]["denoise"] / steps,
            "text_s": rank0["timings"]["text"], "decode_split_s": split, "decode_one_rank_s": alone,
            "decode_share_split": split / (wall - rank0["timings"]["decode"] + split),
            "decode_share_one_rank": alone / (wall - rank0["timings"]["decode"] + alone),
            "busy_share_per_rank": busy,
        })
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
    parser.add_argument("--clip-seconds", type=int, default=3, help="length of the whole-stack clip (0: skip it)")
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

    clips = clip_scaling(args) if args.clip_seconds else []
    if clips:
        print(f"whole tiny stack, one {args.clip_seconds} s 256p clip per TP size (gloo, "
              f"{args.threads_per_rank} thread(s) per rank):")
        print(f"{'TP':>3} {'clip s':>7} {'step ms':>8} {'text ms':>8} {'decode split s':>15} {'one rank s':>11} "
              f"{'decode share split / one rank':>30}  busy share per rank")
        for row in clips:
            print(f"{row['tp']:>3} {row['clip_wall_s']:>7.2f} {row['dit_step_s'] * 1e3:>8.1f} {row['text_s'] * 1e3:>8.1f} "
                  f"{row['decode_split_s']:>15.2f} {row['decode_one_rank_s']:>11.2f} "
                  f"{row['decode_share_split']:>14.0%} / {row['decode_share_one_rank']:<14.0%} "
                  + " ".join(f"{b:.0%}" for b in row["busy_share_per_rank"]))
        print("busy share: the clip's wall time a rank spent computing (denoise, its decode items, audio); "
              "GPU busy share not measured without CUDA")

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
        "hidden_size": width, "tokens": tokens, "cpu": rows, "cpu_clip": clips, "gpu_15b_tp1": gpu,
    }, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
