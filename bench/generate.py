"""Whole-stack generation speed: seconds per phase (text, denoise, super-resolution, decode) per clip.

Runs the given preset (default: the tiny random-weight stack on the CPU) on 5 s clips at 256p,
540p and 1080p, then a batch of two same-shape 256p clips against the same two made one at a
time, side by side in this run. The tiny stack generates at toy sizes and resizes to the delivery
size, so its figures measure paddock's machinery, not the 15B model: the released stack's GPU
figures (published: 2.0 s at 256p, 8.0 s at 540p, 38.4 s at 1080p on one H100) are not measured
here unless you run this with --model magihuman-distill --checkpoint-dir ... --device cuda.
Prints the figures and writes bench/results/generate.json.

    python bench/generate.py [--model tiny] [--seconds 5] [--threads 1] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.generator import PHASES, AVGenerator, ClipSpec, GeneratorConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "generate.json"
PROMPT = (
    "A woman in a green apron stands behind a bakery counter and smiles at the camera.\n\n"
    'Dialogue:\n<Baker, English>: "Fresh bread, every morning."\n\n'
    "Background Sound:\n<Soft chatter of a small shop>"
)


def timed_generate(generator: AVGenerator, specs: list[ClipSpec]) -> tuple[float, list]:
    start = time.perf_counter()
    outputs = generator.generate(specs)
    return time.perf_counter() - start, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on the CPU")
    parser.add_argument("--repeats", type=int, default=2, help="runs per case; the fastest is reported")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    generator = AVGenerator(GeneratorConfig(model=args.model, checkpoint_dir=args.checkpoint_dir, device=args.device))
    build_s = time.perf_counter() - start
    generator.generate([ClipSpec("warm-up", 1, "16:9", "256p", seed=0)])  # first-call allocations

    cases = []
    for resolution in ("256p", "540p", "1080p"):
        spec = ClipSpec(PROMPT, args.seconds, "16:9", resolution, seed=1)
        runs = [timed_generate(generator, [spec]) for _ in range(args.repeats)]
        wall_s, (output,) = min(runs, key=lambda run: run[0])
        cases.append(
            {
                "resolution": resolution,
                "seconds": args.seconds,
                "frames": list(output.frames.shape),
                "audio_samples": output.audio.shape[0],
                "wall_s": round(wall_s, 3),
                **{f"{phase}_s": round(output.timings[phase], 3) for phase in PHASES},
            }
        )

    pair = [ClipSpec(PROMPT, args.seconds, "16:9", "256p", seed=s) for s in (2, 3)]
    sequential_s = min(sum(timed_generate(generator, [spec])[0] for spec in pair) for _ in range(args.repeats))
    batched_s = min(timed_generate(generator, pair)[0] for _ in range(args.repeats))

    result = {
        "model": args.model,
        "device": args.device if args.device != "cpu" else f"cpu ({platform.processor() or platform.machine()})",
        "torch_threads": torch.get_num_threads(),
        "build_s": round(build_s, 3),
        "cases": cases,
        "batch_of_2_256p": {
            "one_at_a_time_s": round(sequential_s, 3),
            "batched_s": round(batched_s, 3),
            "speedup": round(sequential_s / batched_s, 3),
        },
        "text_cache": generator.text_encoder.cache_info(),
        "note": "tiny = random weights at toy width and toy generation sizes; the 15B GPU figures are not measured"
        if generator.preset.tiny is not None
        else "released stack",
    }

    print(f"{args.model} on {result['device']}, {result['torch_threads']} thread(s); build {build_s:.2f} s")
    print(f"{'resolution':>10} {'wall':>7} " + " ".join(f"{p:>16}" for p in PHASES) + "   frames")
    for case in cases:
        phases = " ".join(f"{case[f'{p}_s']:>16.3f}" for p in PHASES)
        print(f"{case['resolution']:>10} {case['wall_s']:>7.3f} {phases}   {case['frames']}")
    b = result["batch_of_2_256p"]
    print(f"two 256p clips: one at a time {b['one_at_a_time_s']:.3f} s, batched {b['batched_s']:.3f} s ({b['speedup']:.2f}x)")
    print(result["note"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
