"""Pipeline overhead: the same requests through the model alone and through the
whole campaign pipeline (plan, generate, review, mux, archive, manifest), in
one run, side by side.

Prints the wall time of each, their ratio, seconds per clip for every stage,
and the bytes that leave the render actor per clip against the raw decoded
frames and audio it keeps to itself. Then the render stage alone (RenderClips)
with two calls in flight, as its actor runs them, at TP=1 and TP=2: the share
of the wall time the model was held (the GPU-busy share, on a GPU) and the
share of review + mux time that overlapped another call's generation.
Writes bench/results/pipeline_overhead.json.

    python bench/pipeline_overhead.py [--clips 12] [--seconds 2] [--model tiny]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.generator import AVGenerator, GeneratorConfig  # noqa: E402
from pipeline.generate import clip_spec  # noqa: E402
from pipeline.run import CampaignConfig, ensure_ray, plan, run_campaign  # noqa: E402
from schemas.brief import BRIEF_ARROW_SCHEMA  # noqa: E402
from schemas.render import RenderRequest  # noqa: E402


def write_briefs(path: Path, clips: int, seconds: int) -> None:
    rows = [{"brief_id": f"bench-{i}", "campaign_id": "bench", "source_locale": "en-US",
             "prompt": f"A presenter holds the product and smiles, take {i}.",
             "dialogue": [{"speaker": "Presenter", "line": "Fresh from the spring."}],
             "duration_s": seconds, "resolution": "256p", "seed": i} for i in range(clips)]
    pq.write_table(pa.Table.from_pylist(rows, schema=BRIEF_ARROW_SCHEMA), path)


def interval(fn, spans: list[tuple[float, float]]):
    """`fn`, recording each call's (start, end) in `spans` (bench instrumentation)."""
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spans.append((start, time.perf_counter()))
    return timed


def overlap_s(spans: list[tuple[float, float]], others: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(b, d) - max(a, c)) for a, b in spans for c, d in others)


def render_stage_overlap(requests: list[RenderRequest], tp: int) -> dict:
    """RenderClips with two concurrent calls of one request each: model-held share and mux overlap."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.mux import CHANNEL_PROFILES
    from pipeline.render import RenderClips
    from pipeline.review import ReviewThresholds
    from pipeline.run import replica_factory
    from schemas.render import RENDER_REQUEST_ARROW_SCHEMA

    config = GeneratorConfig(model="tiny", device="cpu", sr_resolutions=())
    stage = RenderClips(config, ReviewThresholds(), CHANNEL_PROFILES["draft"], batch_size=1,
                        make_generator=replica_factory(tp, "cpu"))
    generating, muxing = [], []
    stage.generate.generator.generate = interval(stage.generate.generator.generate, generating)
    stage._review_and_mux = interval(stage._review_and_mux, muxing)
    blocks = [pa.Table.from_pylist([r.model_dump()], schema=RENDER_REQUEST_ARROW_SCHEMA) for r in requests]
    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(stage, blocks))
    wall = time.perf_counter() - started
    held = sum(b - a for a, b in generating)
    mux = sum(b - a for a, b in muxing)
    if tp > 1:
        stage.generate.generator.shutdown()
    return {"tp": tp, "clips": len(requests), "wall_s": round(wall, 2), "model_held_share": round(held / wall, 3),
            "mux_overlapping_generation_share": round(overlap_s(muxing, generating) / mux, 3) if mux else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--seconds", type=int, default=2)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--overlap-clips", type=int, default=6, help="clips through the render stage per TP size")
    args = parser.parse_args()
    # The pipeline's render actor asks Ray for one CPU, which gives it one torch thread: match it.
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        briefs = tmp / "briefs.parquet"
        write_briefs(briefs, args.clips, args.seconds)
        ensure_ray()
        requests = [RenderRequest.model_validate(r) for r in plan(briefs, args.model).requests.to_pylist()]

        # The model alone: build one replica in this process (the pipeline builds one in its
        # actor, inside its timing), then the same requests one by one.
        started = time.perf_counter()
        generator = AVGenerator(GeneratorConfig(model=args.model, device="cpu", sr_resolutions=()))
        raw_bytes = []
        for request in requests:
            (clip,) = generator.generate([clip_spec(request)])
            raw_bytes.append(clip.frames.nbytes + clip.audio.nbytes)
        model_s = time.perf_counter() - started
        del generator

        # The whole pipeline on the same briefs, with a warm Ray and a fresh DAM.
        config = CampaignConfig(briefs=briefs, dam=str(tmp / "dam"), workdir=tmp / "work", model=args.model,
                                device="cpu", batch_size=1)
        started = time.perf_counter()
        result = run_campaign(config, log=lambda line: None)
        pipeline_s = time.perf_counter() - started

        overlap = [render_stage_overlap(requests[: args.overlap_clips], tp) for tp in (1, 2)]

    assert not result.failed, [r.error for r in result.failed]
    stages = ("text", "denoise", "super_resolution", "decode", "review", "mux", "archive")
    per_clip = {stage: statistics.mean(r.timings_s.get(stage, 0.0) for r in result.manifest) for stage in stages}
    figures = {
        "clips": len(requests),
        "clip_seconds": args.seconds,
        "model": args.model,
        "model_alone_s": round(model_s, 2),
        "pipeline_s": round(pipeline_s, 2),
        "pipeline_over_model": round(pipeline_s / model_s, 3),
        "stage_s_per_clip": {k: round(v, 3) for k, v in per_clip.items()},
        "bytes_from_render_actor_per_clip": int(statistics.mean(r.bytes_from_render for r in result.manifest)),
        "raw_frames_and_audio_bytes_per_clip": int(statistics.mean(raw_bytes)),
    }
    print(f"{figures['clips']} clips of {args.seconds} s, model {args.model}, CPU")
    print(f"  model alone      {figures['model_alone_s']:8.2f} s")
    print(f"  whole pipeline   {figures['pipeline_s']:8.2f} s   ratio {figures['pipeline_over_model']:.2f} "
          f"(goal: under 1.10)")
    print("  seconds per clip by stage: " + ", ".join(f"{k} {v:.2f}" for k, v in per_clip.items()))
    print(f"  bytes leaving the render actor per clip: {figures['bytes_from_render_actor_per_clip']:,} "
          f"(raw frames + audio kept in the actor: {figures['raw_frames_and_audio_bytes_per_clip']:,})")
    for row in overlap:
        print(f"  render stage, TP={row['tp']}, {row['clips']} clips, two calls in flight: model held "
              f"{row['model_held_share']:.0%} of {row['wall_s']:.1f} s; review + mux overlapping another call's "
              f"generation {row['mux_overlapping_generation_share']:.0%}")
    gpu = "measured" if torch.cuda.is_available() else "not measured (no CUDA): the model-held share stands in for it"
    print(f"  GPU-busy share: {gpu}")
    figures["render_stage_overlap"] = overlap
    out = Path(__file__).resolve().parent / "results" / "pipeline_overhead.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
