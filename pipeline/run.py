"""The one place that knows the stage order and the Ray Data calls."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ray.data.expressions import col

from model.generator import AVGenerator, GeneratorConfig
from model.presets import get_preset
from model.replica import make_replica, replica_remote_args_fn
from pipeline.archive import DAM, ArchiveRenders, ArchiveResult, LocalDAM, is_archived, open_dam, render_key_prefix
from pipeline.console import quiet_dependencies
from pipeline.expand import ExpandBriefs
from pipeline.generate import FailedRender, GenerateClips, GeneratedClip, describe_error, shape_key
from pipeline.ingest import REJECTS_SCHEMA, ValidateBriefs, first_row_by_brief_id, read_briefs_table, reason_category
from pipeline.lineage import JobType, LineageConfig, LineageRun, briefs_dataset, checkpoint_dataset, dam_dataset
from pipeline.media import check_ffmpeg
from pipeline.manifest import MANIFEST_ARROW_SCHEMA, ManifestRow, contact_sheet_html
from pipeline.mux import CHANNEL_PROFILES, ChannelProfile, mux_clip
from pipeline.review import ReviewExpectation, ReviewResult, ReviewThresholds, review_clip, with_delivered_loudness
from schemas.brief import BRIEF_ARROW_SCHEMA
from schemas.render import RENDER_REQUEST_ARROW_SCHEMA, RenderRequest

MANIFEST_KEY = "manifest.parquet"
CONTACT_SHEET_KEY = "contact_sheet.html"

# Rows per Ray Data block when planning: large enough to amortize task
# overhead, small enough that both cores get work on a few thousand briefs.
PLAN_BLOCK_ROWS = 5_000


logger = logging.getLogger(__name__)

# Whether ensure_ray started this process's Ray itself (no cluster autoscaler to wait for).
_started_local_instance = False


def ensure_ray(address: str | None = None) -> None:
    """Join the cluster at ``address`` (or RAY_ADDRESS), else start a local instance.

    Never joins a cluster by surprise: without an address, a fresh local
    instance starts even when another Ray runs on this machine.
    """
    global _started_local_instance
    log_level = quiet_dependencies()
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, include_dashboard=False, logging_level=log_level, configure_logging=True)
        _started_local_instance = address == "local"
    # paddock prints its own progress; Ray Data's per-operator log lines drown it.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(max(log_level, logging.WARNING))


class RunSetupError(ValueError):
    """The job cannot start as configured; the message names the setting and the fix."""


@contextmanager
def _rows_in_input_order() -> Iterator[None]:
    """Planning keeps the briefs file's order; rendering must not (a finished clip
    would wait for every earlier one before it is archived)."""
    options = ray.data.DataContext.get_current().execution_options
    before, options.preserve_order = options.preserve_order, True
    try:
        yield
    finally:
        options.preserve_order = before


@dataclass
class PlanResult:
    requests: pa.Table
    rejects: pa.Table
    briefs_read: int
    briefs_valid: int
    reject_reasons: Counter = field(default_factory=Counter)


def _concat(refs: list, schema: pa.Schema) -> pa.Table:
    tables = [t for t in ray.get(refs) if t.num_rows]
    if not tables:
        return schema.empty_table()
    return pa.concat_tables([t.select(schema.names).cast(schema) for t in tables])


def plan(briefs: str | Path | pa.Table, model_id: str, s3_endpoint: str | None = None) -> PlanResult:
    """ingest + expand: a briefs file (local or s3://, or the table read_briefs_table made
    of it) in, render requests and rejects out."""
    table = briefs if isinstance(briefs, pa.Table) else read_briefs_table(briefs, s3_endpoint)
    ensure_ray()
    first_row_of = first_row_by_brief_id(
        table.column("brief_id").to_pylist() if "brief_id" in table.column_names else []
    )
    with _rows_in_input_order():
        blocks = [table.slice(start, PLAN_BLOCK_ROWS) for start in range(0, max(table.num_rows, 1), PLAN_BLOCK_ROWS)]
        validated = (
            ray.data.from_arrow(blocks)
            .map_batches(ValidateBriefs(first_row_of, model_id), batch_format="pyarrow", batch_size=None)
            .materialize()
        )
        valid = validated.filter(expr=col("reason").is_null())
        rejects = _concat(validated.filter(expr=col("reason").is_not_null()).to_arrow_refs(), REJECTS_SCHEMA)
        requests = _concat(
            valid.map_batches(ExpandBriefs(model_id), batch_format="pyarrow", batch_size=None).to_arrow_refs(),
            RENDER_REQUEST_ARROW_SCHEMA,
        )
        reasons = Counter(reason_category(r) for r in rejects.column("reason").to_pylist())
    return PlanResult(requests, rejects, table.num_rows, valid.count(), reasons)


def write_plan(result: PlanResult, out_dir: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    requests_path, rejects_path = out_dir / "requests.parquet", out_dir / "rejects.parquet"
    pq.write_table(result.requests, requests_path)
    pq.write_table(result.rejects, rejects_path)
    return requests_path, rejects_path


# --------------------------------------------------------------------------- the campaign batch job


class CampaignConfig(BaseModel):
    """Everything `paddock run` needs; real weights, GPUs and S3 are settings here, not code."""

    model_config = ConfigDict(extra="forbid")

    briefs: str = Field(description="briefs Parquet file: a local path or s3://bucket/key")
    dam: str = "./dam"
    s3_endpoint: str | None = None
    model: str = "tiny"
    checkpoint_dir: Path | None = None
    device: str = "auto"
    tp_size: int = Field(1, ge=1)
    replicas: int = Field(1, ge=1)
    workdir: Path = Path("./work")
    batch_size: int = Field(2, ge=1, description="requests per call into a replica")
    profile: str = "web"
    thresholds: ReviewThresholds = ReviewThresholds()

    @field_validator("briefs", mode="before")
    @classmethod
    def _path_as_text(cls, value):
        return os.fspath(value) if isinstance(value, os.PathLike) else value


class RenderClips:
    """Actor-pool stage: generate, review and mux in one process, so decoded
    frames never leave the machine that decoded them; only the encoded
    deliverables (MP4, WAV, poster, captions) travel on to archive."""

    def __init__(self, generator_config: GeneratorConfig, thresholds: ReviewThresholds, profile: ChannelProfile,
                 batch_size: int, tp_size: int = 1):
        check_ffmpeg()  # once per actor (a Serve replica, a pool actor): its node's ffmpeg, before the model loads
        self.generate = GenerateClips(generator_config, max_batch=batch_size,
                                      make_generator=replica_factory(tp_size, generator_config.device))
        self.thresholds = thresholds
        self.profile = profile
        # The actor runs two calls at once: one holds the model while the other
        # reviews and encodes its clips on the CPU.
        self.model_lock = threading.Lock()

    def __call__(self, batch: pa.Table) -> pa.Table:
        requests = [RenderRequest.model_validate(row) for row in batch.to_pylist()]
        with self.model_lock:
            results = self.generate(requests)
        rows = []
        for result in results:
            row = {**result.request.model_dump(include=set(RENDERED_SCHEMA.names)),
                   "review_json": None, "assets": None, "timings_s": None, "error": None}
            if isinstance(result, FailedRender):
                row["error"] = result.error
            else:
                try:
                    row.update(self._review_and_mux(result))
                except Exception as exc:  # noqa: BLE001 - a clip that cannot be encoded is one failure row
                    row["error"] = f"review/mux: {describe_error(exc)}"
            rows.append(row)
        return pa.Table.from_pylist(rows, schema=RENDERED_SCHEMA)

    def _review_and_mux(self, clip: GeneratedClip) -> dict:
        timings = dict(clip.timings_s)
        started = time.perf_counter()
        review = review_clip(clip.frames, clip.audio, clip.sample_rate, clip.fps,
                             ReviewExpectation.from_request(clip.request), self.thresholds)
        timings["review"] = time.perf_counter() - started
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="paddock-mux-") as tmp:
            muxed = mux_clip(clip.frames, clip.audio, clip.sample_rate, clip.fps, tmp, clip.request.render_id,
                             dialogue=clip.request.dialogue, speech_spans=review.speech_spans, profile=self.profile)
            review = with_delivered_loudness(review, muxed.output_lufs, muxed.output_true_peak_dbtp, self.thresholds)
            assets = {ext: path.read_bytes() for ext, path in
                      (("mp4", muxed.mp4_path), ("wav", muxed.wav_path), ("jpg", muxed.poster_path),
                       ("vtt", muxed.vtt_path))}
        timings["mux"] = time.perf_counter() - started
        return {"review_json": review.model_dump_json(), "assets": list(assets.items()), "timings_s": list(timings.items())}


RENDERED_SCHEMA = pa.schema([
    *(RENDER_REQUEST_ARROW_SCHEMA.field(name) for name in
      ("render_id", "campaign_id", "brief_id", "locale", "aspect_ratio", "model_id", "seed")),
    ("review_json", pa.string()),
    ("assets", pa.map_(pa.string(), pa.binary())),
    ("timings_s", pa.map_(pa.string(), pa.float64())),
    ("error", pa.string()),
])


def _manifest_row(request: RenderRequest, status: str, *, error: str | None = None,
                  review: ReviewResult | None = None, archive: ArchiveResult | None = None,
                  timings: dict[str, float] | None = None, bytes_from_render: int = 0) -> ManifestRow:
    row = ManifestRow(
        **request.model_dump(include=set(ManifestRow.model_fields) & set(RenderRequest.model_fields)),
        variant_index=request.take, status=status, error=error, timings_s=timings or {}, bytes_from_render=bytes_from_render,
    )
    if review is not None:
        row = row.model_copy(update={
            "review_status": review.review_status, "review_reasons": review.review_reasons,
            **{f"review_{name}": getattr(review, name) for name in (
                "duration_s", "black_frame_share", "frozen_frame_share", "silence_share", "clipping_share",
                "integrated_lufs", "true_peak_dbtp", "av_offset_ms", "av_offset_confidence")},
        })
    if archive is not None:
        row = row.model_copy(update={"dam_uri": archive.dam_uri, "keys": archive.keys, "sha256": archive.sha256,
                                     "sizes": archive.sizes, "bytes_uploaded": archive.bytes_uploaded})
    return row


def resolve_device(device: str) -> str:
    """"auto": CUDA when the Ray cluster has GPUs (the driver may run on a head
    without any), or, with no Ray running, when this machine has one."""
    if device != "auto":
        return device
    if ray.is_initialized():
        return "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def replica_resources(device: str) -> tuple[float, float]:
    """(owner_cpus, cpus_per_rank) of a tensor-parallel replica. GPU ranks each
    hold a GPU and a core; CPU ranks (gloo, for trying TP by hand or in tests)
    share the machine's cores, so they ask for half a core each."""
    return (1.0, 1.0) if device.startswith("cuda") else (0.5, 0.5)


def replica_factory(tp_size: int, device: str) -> Callable[[GeneratorConfig], Any]:
    """How one model replica is built: in this process at tp_size 1, else as a
    tensor-parallel group of rank actors (model/replica.py)."""
    if tp_size == 1:
        return AVGenerator
    _, cpus_per_rank = replica_resources(device)
    return partial(make_replica, tp_size=tp_size, use_gpu=device.startswith("cuda"), cpus_per_rank=cpus_per_rank)


@contextmanager
def replica_pool(tp_size: int, replicas: int, device: str) -> Iterator[dict]:
    """The render stage's actor pool, as ``map_batches`` arguments: one actor per model replica.

    At tp_size 1 the actor holds the replica itself and asks for its device. Above,
    each actor gets its own STRICT_PACK placement group (owner bundle + one bundle
    per rank) from ``ray_remote_args_fn`` and starts its rank actors inside it,
    as Ray's own batch LLM stage does; the actor itself asks for no GPU. Ray keeps
    a driver's placement groups until the driver exits, so those made here are
    removed when the block ends.
    """
    pool = ray.data.ActorPoolStrategy(size=replicas, max_concurrent_calls_per_actor=2,
                                      enable_true_multi_threading=True)
    use_gpu = device.startswith("cuda")
    if tp_size == 1:
        yield {"compute": pool, **({"num_gpus": 1} if use_gpu else {"num_cpus": 1})}
        return
    owner_cpus, cpus_per_rank = replica_resources(device)
    make_remote_args = replica_remote_args_fn(tp_size, use_gpu, cpus_per_rank, owner_cpus)
    groups = []

    def remote_args() -> dict:
        args = make_remote_args()
        groups.append(args["scheduling_strategy"].placement_group)
        return args

    try:
        yield {"compute": pool, "num_cpus": owner_cpus, "num_gpus": 0, "ray_remote_args_fn": remote_args}
    finally:
        for group in groups:
            ray.util.remove_placement_group(group)


@dataclass
class CampaignResult:
    plan: PlanResult
    manifest: list[ManifestRow]
    manifest_path: Path
    contact_sheet_path: Path
    dam_uri: str

    @property
    def failed(self) -> list[ManifestRow]:
        return [row for row in self.manifest if row.status == "failed"]


def _generator_config(config: CampaignConfig, todo: list[RenderRequest]) -> GeneratorConfig:
    """The replicas' generator, checked in the driver before any actor starts: a model
    that cannot be built, or GPUs the cluster does not have, fail here in one line."""
    device = resolve_device(config.device)
    try:
        generator_config = GeneratorConfig(
            model=config.model, checkpoint_dir=config.checkpoint_dir, device=device,
            sr_resolutions=tuple(sorted({r.resolution for r in todo} - {"256p"})))
        if get_preset(config.model).tiny is None:
            generator_config.released_paths()
    except (ValueError, FileNotFoundError) as exc:
        raise RunSetupError(f"--model {config.model}: {exc}") from None
    if device.startswith("cuda"):
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < config.tp_size:
            needs = f"this Ray has {gpus:g} GPUs and a replica needs {config.tp_size} (--tp)"
            if _started_local_instance:
                raise RunSetupError(f"--device {device}: {needs}; use --device cpu, or a machine or cluster "
                                    "with GPUs (RAY_ADDRESS)")
            logger.warning("%s; waiting for the cluster's autoscaler to add GPU nodes", needs)
    return generator_config


def _already_archived(dam: DAM, requests: list[RenderRequest]) -> dict[str, ManifestRow]:
    """render_id -> its "skipped" manifest row, for renders a previous run finished. A
    record whose review no longer reads as a ReviewResult counts as not finished: the
    render is redone."""
    def check(request: RenderRequest) -> ManifestRow | None:
        prefix = render_key_prefix(request.campaign_id, request.brief_id, request.locale, request.aspect_ratio)
        record = is_archived(dam, prefix, request.render_id)
        if record is None:
            return None
        try:
            review = ReviewResult.model_validate(record["review"]) if record.get("review") else None
        except ValidationError:
            logger.warning("%s: the completion record of %s has an unreadable review; redoing it",
                           dam.uri, request.render_id)
            return None
        objects = record["objects"]
        return _manifest_row(request, "skipped", review=review).model_copy(update={
            "dam_uri": dam.uri,
            "keys": {ext: obj["key"] for ext, obj in objects.items()},
            "sha256": {ext: obj["sha256"] for ext, obj in objects.items()},
            "sizes": {ext: obj["size"] for ext, obj in objects.items()},
        })

    with ThreadPoolExecutor(max_workers=16) as pool:
        return {row.render_id: row for row in pool.map(check, requests) if row is not None}


def read_dam_manifest(dam: DAM) -> dict[str, ManifestRow]:
    """The manifest a previous run left in the DAM, by render_id (empty when there is none)."""
    data = dam.get_bytes(MANIFEST_KEY)
    if data is None:
        return {}
    table = pq.read_table(io.BytesIO(data))
    return {row["render_id"]: ManifestRow.model_validate(row) for row in table.to_pylist()}


def run_campaign(config: CampaignConfig, log: Callable[[str], None] = print, *,
                 job_type: JobType = JobType.CAMPAIGN_BATCH,
                 select: Callable[[RenderRequest], bool] | None = None) -> CampaignResult:
    """The campaign batch job: plan, skip what the DAM has, render, review, mux, archive, report.

    ``select(request)`` narrows the planned requests (the
    localization job keeps only new locales). One OpenLineage run covers the
    job: START, then COMPLETE, or FAIL when the job raises or a render failed.
    """
    check_ffmpeg()  # before any model work: a build that cannot mux would fail every render
    dam = open_dam(config.dam, s3_endpoint=config.s3_endpoint)
    config.workdir.mkdir(parents=True, exist_ok=True)
    lineage = LineageRun(
        LineageConfig.from_env(job_type.value.lower(), config.workdir), job_type,
        inputs=[briefs_dataset(config.briefs, BRIEF_ARROW_SCHEMA),
                checkpoint_dataset(config.model, config.checkpoint_dir)],
        outputs=[dam_dataset(dam.uri)],
    )
    lineage.start()
    try:
        result = _run_campaign(config, dam, log, select)
    except BaseException as exc:
        lineage.fail(exc)
        lineage.close()
        raise
    lineage.outputs = [dam_dataset(dam.uri, rows=len(result.manifest),
                                   file_count=sum(len(r.keys) for r in result.manifest),
                                   size_bytes=sum(sum(r.sizes.values()) for r in result.manifest))]
    if result.failed:
        lineage.fail(f"{len(result.failed)} of {len(result.manifest)} renders failed")
    else:
        lineage.complete()
    lineage.close()
    return result


def _run_campaign(config: CampaignConfig, dam: DAM, log: Callable[[str], None],
                  select: Callable[[RenderRequest], bool] | None) -> CampaignResult:
    planned = plan(config.briefs, model_id=config.model, s3_endpoint=config.s3_endpoint)
    write_plan(planned, config.workdir)
    log(f"planned {planned.requests.num_rows} renders from {planned.briefs_valid}/{planned.briefs_read} briefs "
        f"({planned.rejects.num_rows} rejects in {config.workdir / 'rejects.parquet'})")

    requests = [RenderRequest.model_validate(row) for row in planned.requests.to_pylist()]
    if select is not None:
        requests = [r for r in requests if select(r)]
        log(f"{len(requests)} of {planned.requests.num_rows} renders selected")
    by_id = {r.render_id: r for r in requests}
    archived = _already_archived(dam, requests)
    manifest: dict[str, ManifestRow] = dict(archived)
    todo = [r for r in requests if r.render_id not in archived]
    log(f"{len(archived)} renders already in {dam.uri}, {len(todo)} to make")

    if todo:
        # Grouped by shape so a replica's batches share latent sizes.
        todo.sort(key=shape_key)
        generator_config = _generator_config(config, todo)
        table = pa.Table.from_pylist([r.model_dump() for r in todo], schema=RENDER_REQUEST_ARROW_SCHEMA)
        # One block per replica call, so every replica of the pool gets work.
        blocks = [table.slice(start, config.batch_size) for start in range(0, table.num_rows, config.batch_size)]
        with replica_pool(config.tp_size, config.replicas, generator_config.device) as pool_args:
            rendered = (
                ray.data.from_arrow(blocks)
                .map_batches(
                    RenderClips,
                    fn_constructor_kwargs={"generator_config": generator_config, "thresholds": config.thresholds,
                                           "profile": CHANNEL_PROFILES[config.profile],
                                           "batch_size": config.batch_size, "tp_size": config.tp_size},
                    batch_size=config.batch_size, batch_format="pyarrow",
                    **pool_args,
                )
                .map_batches(ArchiveRenders(dam), batch_format="pyarrow", batch_size=1, num_cpus=0.5)
            )
            started = time.perf_counter()
            for batch in rendered.iter_batches(batch_format="pyarrow", batch_size=None):
                for row in batch.to_pylist():
                    request = by_id[row["render_id"]]
                    review = ReviewResult.model_validate_json(row["review_json"]) if row["review_json"] else None
                    archive = ArchiveResult.model_validate_json(row["archive_json"]) if row["archive_json"] else None
                    status = "done" if archive is not None else "failed"
                    manifest[request.render_id] = _manifest_row(
                        request, status, error=row["error"], review=review, archive=archive,
                        timings={**dict(row["timings_s"] or []),
                                 **({"archive": row["archive_s"]} if row["archive_s"] is not None else {})},
                        bytes_from_render=row["assets_bytes"])
                    done = len(manifest) - len(archived)
                    log(f"[{done}/{len(todo)}] {request.brief_id} {request.locale} {request.aspect_ratio} "
                        f"{request.variant_id} t{request.take}: {status}"
                        + (f", {review.review_status}" if review else "") + (f" ({row['error']})" if row["error"] else "")
                        + f"  {time.perf_counter() - started:.0f}s")

    rows = [manifest[r.render_id] for r in requests]
    manifest_path, sheet_path = _write_reports(rows, dam, config.workdir)
    return CampaignResult(planned, rows, manifest_path, sheet_path, dam.uri)


def _manifest_bytes(rows: list[ManifestRow]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([r.model_dump() for r in rows], schema=MANIFEST_ARROW_SCHEMA), sink)
    return sink.getvalue()


def _put_if_changed(dam: DAM, key: str, data: bytes) -> None:
    """Write ``key`` unless the DAM already holds exactly these bytes (a re-run uploads nothing)."""
    stored = dam.head(key)
    if stored is None or stored.sha256 != hashlib.sha256(data).hexdigest():
        dam.put_bytes(key, data)


def _write_reports(rows: list[ManifestRow], dam: DAM, workdir: Path) -> tuple[Path, Path]:
    """This run's manifest.parquet and contact_sheet.html in the work directory; then, last, the
    DAM's: every render the DAM holds, this run's merged into what earlier runs recorded."""
    manifest_path = workdir / "manifest.parquet"
    manifest_path.write_bytes(_manifest_bytes(rows))
    sheet_path = workdir / "contact_sheet.html"
    local_root = dam.root.resolve().as_uri() + "/" if isinstance(dam, LocalDAM) else ""
    sheet_path.write_text(contact_sheet_html(rows, asset_base=local_root), encoding="utf-8")

    # Read again: another job may have written the DAM's manifest since this one started.
    previous = read_dam_manifest(dam)
    merged = dict(previous)
    for row in rows:
        # A render skipped here keeps the row of the run that made it.
        if not (row.status == "skipped" and row.render_id in previous):
            merged[row.render_id] = row
    dam_rows = sorted(merged.values(), key=lambda r: (r.campaign_id, r.brief_id, r.locale, r.aspect_ratio,
                                                      r.variant_index, r.render_id))
    _put_if_changed(dam, MANIFEST_KEY, _manifest_bytes(dam_rows))
    _put_if_changed(dam, CONTACT_SHEET_KEY, contact_sheet_html(dam_rows).encode("utf-8"))
    return manifest_path, sheet_path
