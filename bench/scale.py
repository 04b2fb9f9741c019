"""Scale: plan + skip check (no rendering) of N one-render briefs against a DAM that already holds
a share of their renders, at each N given (default 10,000 and 100,000; 1,000,000 by asking).

For each N: briefs Parquet generated (campaigns of 10,000 briefs), planned once to know the
render ids, then a DAM written holding ``--archived-share`` of them as completion records with
one small stand-in file each and the manifest a run leaves (fingerprint and review digest per
row). Then, in a fresh process (so its peak RSS is the job's alone): `plan` and the skip check
(pipeline/skipcheck.py, ``--verify``), timed apart, with the S3 requests the DAM's client sent
(``--s3``: against moto's server on loopback, counted by a botocore hook on every request sent).

    python bench/scale.py [--briefs 10000 100000 1000000] [--archived-share 0.3] [--s3] [--verify sample]

Prints one line per N and the growth between sizes; writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.generator import GeneratorConfig  # noqa: E402
from pipeline.archive import CompletionRecord  # noqa: E402
from pipeline.dam.keys import completion_key, render_key  # noqa: E402
from pipeline.fingerprint import fingerprint_for, model_fingerprint  # noqa: E402
from pipeline.manifest import MANIFEST_ARROW_SCHEMA, ManifestRow  # noqa: E402
from pipeline.mux import CHANNEL_PROFILES  # noqa: E402
from pipeline.reports import MANIFEST_KEY  # noqa: E402
from pipeline.rerun import review_digest  # noqa: E402
from pipeline.review import ReviewThresholds  # noqa: E402
from schemas.brief import BRIEF_ARROW_SCHEMA  # noqa: E402

CAMPAIGN_BRIEFS = 10_000
PROFILE = CHANNEL_PROFILES["web"]
THRESHOLDS = ReviewThresholds()


def make_briefs(count: int) -> pa.Table:
    """One render per brief (one locale, one aspect ratio, one take), in campaigns of 10,000."""
    return pa.table({
        "brief_id": [f"brief-{i:07d}" for i in range(count)],
        "campaign_id": [f"campaign-{i // CAMPAIGN_BRIEFS:03d}" for i in range(count)],
        "prompt": [f"Scene {i}: a glass of lemonade on a sunny table." for i in range(count)],
        "source_locale": ["en-US"] * count,
        "duration_s": [2] * count,
        "resolution": ["256p"] * count,
        "forbidden_terms": [["cure"]] * count,
    }).cast(pa.schema([BRIEF_ARROW_SCHEMA.field(name) for name in
                       ("brief_id", "campaign_id", "prompt", "source_locale", "duration_s", "resolution",
                        "forbidden_terms")]))


def _record_bytes(row: dict, key: str, data: bytes, mtime_ns: int | None, fingerprint: dict) -> bytes:
    record = {"render_id": row["render_id"], "campaign_id": row["campaign_id"], "brief_id": row["brief_id"],
              "locale": row["locale"], "aspect_ratio": row["aspect_ratio"], "model_id": row["model_id"],
              "seed": row["seed"], "variant_id": row["variant_id"], "take": row["take"],
              "review_status": "auto_approved", "request": row, "fingerprint": fingerprint,
              "archived_at": datetime.now(timezone.utc).isoformat(), "version": 1,
              "objects": {"mp4": {"key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                  "mtime_ns": mtime_ns}}}
    return json.dumps(record).encode()


def write_dam(requests: pa.Table, share: float, dam_dir: Path | None, s3: tuple[str, str] | None) -> int:
    """Archive ``share`` of the renders as stand-ins (one file and a completion record each) and the manifest."""
    made_with = model_fingerprint(GeneratorConfig(model="tiny"))
    fingerprint = fingerprint_for(made_with, PROFILE, "256p", None)
    rows = requests["row_index"].to_numpy()
    archived = requests.filter(pa.array(rows % 100 < round(share * 100)))  # the share, spread over each campaign
    client = None
    if s3 is not None:
        import boto3

        client = boto3.client("s3", endpoint_url=s3[0])
        client.create_bucket(Bucket=s3[1])
    fp_json = fingerprint.model_dump(mode="json")
    # A record written the way archive_render writes it must read back as one.
    CompletionRecord.model_validate_json(_record_bytes(archived.slice(0, 1).to_pylist()[0], "k", b"x", 1, fp_json))

    def put(row: dict) -> tuple[str, str, int]:
        key = render_key(row["campaign_id"], row["brief_id"], row["locale"], row["aspect_ratio"], row["render_id"],
                         "mp4", row["variant_id"])
        done = completion_key(key.rsplit("/", 1)[0], row["render_id"])
        data = row["render_id"].encode()
        sha = hashlib.sha256(data).hexdigest()
        if client is None:
            path = dam_dir / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            (dam_dir / done).write_bytes(_record_bytes(row, key, data, path.stat().st_mtime_ns, fp_json))
        else:
            client.put_object(Bucket=s3[1], Key=f"dam/{key}", Body=data, Metadata={"sha256": sha})
            client.put_object(Bucket=s3[1], Key=f"dam/{done}", Body=_record_bytes(row, key, data, None, fp_json))
        return key, sha, len(data)

    keys, shas, sizes = [], [], []
    for batch in archived.to_batches(max_chunksize=20_000):
        with ThreadPoolExecutor(max_workers=8 if client else 1) as pool:
            for key, sha, size in pool.map(put, batch.to_pylist()):
                keys.append(key), shas.append(sha), sizes.append(size)
    manifest = _manifest(archived, keys, shas, sizes, fingerprint.digest(),
                         review_digest(["cure"], THRESHOLDS), dam_dir.as_uri() if dam_dir else f"s3://{s3[1]}/dam")
    sink = pa.BufferOutputStream()
    pq.write_table(manifest, sink)
    if client is None:
        (dam_dir / MANIFEST_KEY).write_bytes(sink.getvalue().to_pybytes())
    else:
        client.put_object(Bucket=s3[1], Key=f"dam/{MANIFEST_KEY}", Body=sink.getvalue().to_pybytes())
    return archived.num_rows


def _manifest(archived: pa.Table, keys, shas, sizes, fingerprint: str, review: str, dam_uri: str) -> pa.Table:
    """The manifest rows a run leaves for these renders, built column by column."""
    n = archived.num_rows
    given = {
        "status": pa.array(["done"] * n), "model_prompt": archived["prompt"], "dam_uri": pa.array([dam_uri] * n),
        "keys": pa.array([[("mp4", k)] for k in keys], pa.map_(pa.string(), pa.string())),
        "sha256": pa.array([[("mp4", s)] for s in shas], pa.map_(pa.string(), pa.string())),
        "sizes": pa.array([[("mp4", s)] for s in sizes], pa.map_(pa.string(), pa.int64())),
        "fingerprint": pa.array([fingerprint] * n), "review_digest": pa.array([review] * n),
        "review_status": pa.array(["auto_approved"] * n),
    }
    columns = []
    for field in MANIFEST_ARROW_SCHEMA:
        if field.name in given:
            columns.append(given[field.name])
        elif field.name in archived.column_names:
            columns.append(archived[field.name])
        else:
            default = ManifestRow.model_fields[field.name].default
            columns.append(pa.nulls(n, field.type) if default is None else pa.array([default] * n, field.type))
    return pa.Table.from_arrays([c.cast(f.type) if c.type != f.type else c for c, f in zip(columns, MANIFEST_ARROW_SCHEMA)],
                                schema=MANIFEST_ARROW_SCHEMA)


def measure(briefs: str, dam: str, endpoint: str | None, verify: str) -> dict:
    """plan + skip check, as `paddock run` does them before rendering; this process's figures."""
    from pipeline.dam import open_dam
    from pipeline.run import ensure_ray, plan
    from pipeline.skipcheck import check_archived

    started = time.perf_counter()
    ensure_ray()
    ray_s = time.perf_counter() - started
    started = time.perf_counter()
    planned = plan(briefs, model_id="tiny")
    plan_s = time.perf_counter() - started
    store = open_dam(dam, s3_endpoint=endpoint)
    calls = {"n": 0}
    if endpoint:
        def count(**_):
            calls["n"] += 1
        store.client.meta.events.register("before-send.s3", count)
    started = time.perf_counter()
    made_with = model_fingerprint(GeneratorConfig(model="tiny"))
    check = check_archived(store, planned.requests, made_with, PROFILE, THRESHOLDS, verify=verify, seed=0)
    skip_s = time.perf_counter() - started
    actions = pc.value_counts(check.actions["action"]).to_pylist()
    return {"renders": planned.requests.num_rows, "ray_start_s": round(ray_s, 2), "plan_s": round(plan_s, 2),
            "skip_check_s": round(skip_s, 2), "skip_check_parts_s": {k: round(v, 2) for k, v in check.timings_s.items()},
            "skipped": check.from_index, "verified": check.verified,
            "failed": len(check.failed), "actions": {a["values"]: a["counts"] for a in actions},
            "s3_requests": calls["n"] if endpoint else None,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--briefs", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--archived-share", type=float, default=0.3)
    parser.add_argument("--s3", action="store_true", help="the DAM on moto's S3 server on loopback")
    parser.add_argument("--verify", default="sample", choices=("sample", "full", "none"))
    parser.add_argument("--measure", nargs=4, metavar=("BRIEFS", "DAM", "ENDPOINT", "VERIFY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        briefs, dam, endpoint, verify = args.measure
        print(json.dumps(measure(briefs, dam, None if endpoint == "-" else endpoint, verify)))
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="paddock-scale-") as tmp, _s3_server(args.s3) as endpoint:
        for count in args.briefs:
            folder = Path(tmp) / str(count)
            folder.mkdir()
            briefs = folder / "briefs.parquet"
            pq.write_table(make_briefs(count), briefs)
            started = time.perf_counter()
            requests = pq.read_table(_plan_once(briefs, folder))
            s3 = (endpoint, f"scale-{count}") if endpoint else None
            archived = write_dam(requests, args.archived_share, None if s3 else folder / "dam", s3)
            del requests
            setup_s = time.perf_counter() - started
            dam = f"s3://{s3[1]}/dam" if s3 else str(folder / "dam")
            out = subprocess.run([sys.executable, __file__, "--measure", str(briefs), dam, endpoint or "-",
                                  args.verify], capture_output=True, text=True, check=True)
            result = {"briefs": count, "archived": archived, "setup_s": round(setup_s, 1), "verify": args.verify,
                      "dam": "s3 (moto)" if s3 else "local", **json.loads(out.stdout.strip().splitlines()[-1])}
            if result["s3_requests"] is not None:
                result["s3_requests_per_render"] = round(result["s3_requests"] / result["renders"], 4)
                result["s3_requests_per_skipped"] = round(result["s3_requests"] / max(result["skipped"], 1), 4)
            results.append(result)
            print(json.dumps(result), flush=True)
            subprocess.run(["rm", "-rf", str(folder)], check=False)
    for before, after in zip(results, results[1:]):
        factor = after["briefs"] / before["briefs"]
        print(f"{before['briefs']:,} -> {after['briefs']:,} briefs (x{factor:g}): plan x{after['plan_s'] / before['plan_s']:.2f}, "
              f"skip check x{after['skip_check_s'] / before['skip_check_s']:.2f}, "
              f"peak RSS x{after['peak_rss_mb'] / before['peak_rss_mb']:.2f}")
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scale.json").write_text(json.dumps(results, indent=2))


def _plan_once(briefs: Path, folder: Path) -> Path:
    """The plan's requests, from a process of its own (the DAM to write holds their render ids)."""
    code = ("import sys; sys.path.insert(0, sys.argv[3]); from pipeline.run import plan, write_plan; "
            "write_plan(plan(sys.argv[1], model_id='tiny'), sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, str(briefs), str(folder / "plan"), str(ROOT)], check=True,
                   capture_output=True)
    return folder / "plan" / "requests.parquet"


class _s3_server:
    """moto's S3 server on loopback when asked for (tests/integration/s3_server.py's way), else nothing."""

    def __init__(self, wanted: bool):
        self.wanted, self.server = wanted, None

    def __enter__(self) -> str | None:
        if not self.wanted:
            return None
        import logging
        import socket

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                           "AWS_DEFAULT_REGION": "us-east-1"})
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.server.start()
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.stop()


if __name__ == "__main__":
    main()
