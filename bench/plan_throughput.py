"""Planning throughput: ingest + expand over N generated briefs (default 100,000).

Prints briefs/s, the wall time of `plan` (Ray start-up excluded and shown
apart), and writes bench/results/plan_throughput.json.

    python bench/plan_throughput.py [--briefs 100000]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.run import ensure_ray, plan  # noqa: E402
from schemas.brief import BRIEF_ARROW_SCHEMA  # noqa: E402


def make_briefs(count: int, seed: int = 0) -> pa.Table:
    """Briefs shaped like a real campaign mix, with about 2 % faulty rows."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        locales = rng.choice([["en-US"], ["en-US", "de-DE"], ["en-US", "de-DE", "ja-JP"], ["fr-FR", "es-ES"]])
        row = {
            "brief_id": f"brief-{i:07d}",
            "campaign_id": f"campaign-{i // 1000:04d}",
            "prompt": f"Scene {i}: a person holds the product in warm light and smiles at the camera.",
            "source_locale": locales[0],
            "dialogue": [{"speaker": "Presenter", "line": f"Line {i}."}],
            "localized_dialogue": [{"locale": loc, "lines": [{"speaker": "Presenter", "line": f"Zeile {i}."}]}
                                   for loc in locales[1:] if loc != "es-ES"],
            "locales": locales,
            "aspect_ratios": rng.choice([["16:9"], ["16:9", "9:16"], ["1:1"]]),
            "duration_s": rng.choice([5, 10, 15, 20 if rng.random() < 0.01 else 5]),
            "resolution": rng.choice(["256p", "540p", "1080p"]),
            "takes": rng.choice([1, 1, 2]),
        }
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=BRIEF_ARROW_SCHEMA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--briefs", type=int, default=100_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "briefs.parquet"
        pq.write_table(make_briefs(args.briefs), path)
        started = time.perf_counter()
        ensure_ray()
        ray_start_s = time.perf_counter() - started
        started = time.perf_counter()
        result = plan(path, model_id="magihuman-distill")
        plan_s = time.perf_counter() - started

    figures = {
        "briefs": result.briefs_read,
        "valid_briefs": result.briefs_valid,
        "render_requests": result.requests.num_rows,
        "rejects": result.rejects.num_rows,
        "ray_start_s": round(ray_start_s, 2),
        "plan_s": round(plan_s, 2),
        "briefs_per_s": round(result.briefs_read / plan_s),
    }
    print(f"planned {figures['briefs']} briefs -> {figures['render_requests']} requests, "
          f"{figures['rejects']} rejects in {figures['plan_s']} s "
          f"({figures['briefs_per_s']} briefs/s; Ray start-up {figures['ray_start_s']} s not included)")
    out = Path(__file__).resolve().parent / "results" / "plan_throughput.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
