"""The one place that knows the stage order and the Ray Data calls: `plan` (ingest +
expand), `run_campaign` (plan, skip what the DAM has, render, archive, report) and
the placement of the render stage's replicas. The stages themselves live in their
own modules (render.py, archive.py, reports.py, ...)."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from pydantic import Field, field_validator
from ray.data.expressions import col

from model.generator import AVGenerator, GeneratorConfig
from model.presets import get_preset
from model.placement import ReplicaShape, check_cluster_fit
from model.replica import make_replica
from pipeline.archive import ArchiveRenders, spooled_renders
from pipeline.dam import DAM, open_dam
from pipeline.console import quiet_dependencies
from pipeline.enhance import ENHANCED_SCHEMA, EnhancePrompts, PromptLLMConfig, apply_prompts, distinct_inputs
from pipeline.expand import ExpandBriefs
from pipeline.fingerprint import delivery_fingerprint, model_fingerprint
from pipeline.generate import shape_batches, token_budget
from pipeline.ingest import REJECTS_SCHEMA, ValidateBriefs, first_row_by_brief_id, read_briefs_table, reason_category
from pipeline.lineage import (JobType, LineageConfig, LineageRun, briefs_dataset, checkpoint_dataset, dam_dataset,
                              prompt_model_dataset)
from pipeline.manifest import ManifestRow, best_held_takes, mark_best_takes
from pipeline.media import check_ffmpeg
from pipeline.mux import CHANNEL_PROFILES
from pipeline.render import RenderClips
from pipeline.errors import describe_error
from pipeline.reports import (ManifestMerger, kept_manifest_rows, manifest_row, merge_on_sigterm, rendered_manifest_row,
                             write_reports)
from pipeline.rerun import RedeliverClips
from pipeline.settings import RenderSettings
from pipeline.skipcheck import VerifyMode, check_archived, requests_of, selected_requests
from schemas.brief import BRIEF_ARROW_SCHEMA
from schemas.render import RENDER_REQUEST_ARROW_SCHEMA, RenderRequest

# Rows per Ray Data block when planning: large enough to amortize task
# overhead, small enough that both cores get work on a few thousand briefs.
PLAN_BLOCK_ROWS = 5_000

# Ray Data rebuilds a dead actor and retries a task without end by default: a batch that kills
# its process (host OOM, a native crash) would reload the model until the job's deadline.
STAGE_RETRIES = 2


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


def plan(briefs: str | Path | pa.Table, model_id: str, s3_endpoint: str | None = None,
         checkpoint_dir: str | Path | None = None, prompt_llm: PromptLLMConfig | None = None) -> PlanResult:
    """ingest + expand: a briefs file (local or s3://, or the table read_briefs_table made
    of it) in, render requests and rejects out. With the released weights' ``checkpoint_dir``,
    prompts are measured against the text window with the model's own tokenizer; ``prompt_llm``'s
    settings enter the ids."""
    table = briefs if isinstance(briefs, pa.Table) else read_briefs_table(briefs, s3_endpoint)
    ensure_ray()
    first_row_of = first_row_by_brief_id(
        table.column("brief_id").to_pylist() if "brief_id" in table.column_names else []
    )
    with _rows_in_input_order():
        blocks = [table.slice(start, PLAN_BLOCK_ROWS) for start in range(0, max(table.num_rows, 1), PLAN_BLOCK_ROWS)]
        validated = (
            ray.data.from_arrow(blocks)
            .map_batches(ValidateBriefs(first_row_of, model_id, _text_encoder_dir(model_id, checkpoint_dir),
                                        s3_endpoint=s3_endpoint),
                         batch_format="pyarrow", batch_size=None)
            .materialize()
        )
        valid = validated.filter(expr=col("reason").is_null())
        rejects = _concat(validated.filter(expr=col("reason").is_not_null()).to_arrow_refs(), REJECTS_SCHEMA)
        requests = _concat(
            valid.map_batches(ExpandBriefs(model_id, prompt_llm.identity() if prompt_llm else None),
                              batch_format="pyarrow", batch_size=None).to_arrow_refs(),
            RENDER_REQUEST_ARROW_SCHEMA,
        )
        reasons = Counter(reason_category(r) for r in rejects.column("reason").to_pylist())
    return PlanResult(requests, rejects, table.num_rows, valid.count(), reasons)


def _text_encoder_dir(model_id: str, checkpoint_dir: str | Path | None) -> Path | None:
    preset = get_preset(model_id)
    if preset.tiny is not None or checkpoint_dir is None:
        return None
    return Path(checkpoint_dir) / preset.folders["text_encoder"]


def write_plan(result: PlanResult, out_dir: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    requests_path, rejects_path = out_dir / "requests.parquet", out_dir / "rejects.parquet"
    pq.write_table(result.requests, requests_path)
    pq.write_table(result.rejects, rejects_path)
    return requests_path, rejects_path


# --------------------------------------------------------------------------- the campaign batch job


class CampaignConfig(RenderSettings):
    """Everything `paddock run` needs; real weights, GPUs and S3 are settings here, not code.
    The shared settings are pipeline/settings.py's."""

    briefs: str = Field(description="briefs Parquet file: a local path or s3://bucket/key")
    workdir: Path = Path("./work")
    batch_size: int = Field(2, ge=1, description="requests per call into a replica")
    tokens_per_forward: int | None = Field(None, ge=1, description="DiT tokens one call may hold: smaller shapes "
                                           "pack more requests (pipeline.generate.token_budget); default: "
                                           "batch_size clips of the run's largest shape")
    prompt_llm: PromptLLMConfig | None = Field(None, description="the enhance stage's LLM; None: template prompts")
    manifest_merge_rows: int = Field(16, ge=1, description="merge into the DAM's manifest every this many renders")
    manifest_merge_s: float = Field(60.0, gt=0, description="... or at least this often (seconds), and on SIGTERM")
    verify: VerifyMode = Field("sample", description="the skip check's look at the objects of renders it keeps: a "
                               "sample (widened to all on a failure), all of them, or none (trust the index)")
    verify_seed: int | None = Field(None, description="seed of the sample's draw; None: a fresh draw each run")
    deliver: Literal["all", "best"] = Field(
        "all", description="best: archive only the best take of each group; the others wait in <workdir>/spool")

    @field_validator("briefs", mode="before")
    @classmethod
    def _path_as_text(cls, value):
        return os.fspath(value) if isinstance(value, os.PathLike) else value


def resolve_device(device: str) -> str:
    """"auto": CUDA when the Ray cluster has GPUs (the driver may run on a head
    without any), or, with no Ray running, when this machine has one."""
    if device != "auto":
        return device
    if ray.is_initialized():
        return "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def replica_factory(tp_size: int, device: str) -> Callable[[GeneratorConfig], Any]:
    """How one model replica is built: in this process at tp_size 1, else as a
    tensor-parallel group of rank actors (model/replica.py)."""
    shape = ReplicaShape.for_device(tp_size, device)
    return AVGenerator if shape.in_process else partial(make_replica, shape=shape)


@contextmanager
def replica_pool(tp_size: int, replicas: int, device: str) -> Iterator[dict]:
    """The render stage's actor pool, as ``map_batches`` arguments: one actor per model
    replica, placed by model/placement.py. Each actor runs two calls at once (RenderClips:
    one holds the model while the other reviews and encodes)."""
    with ReplicaShape.for_device(tp_size, device).data_pool_args(
            replicas, max_concurrent_calls_per_actor=2, enable_true_multi_threading=True) as args:
        yield args


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
            model=config.model, checkpoint_dir=config.checkpoint_dir, device=device, decoder=config.decoder,
            s3_endpoint=config.s3_endpoint, text_encoder_device=config.text_encoder_device,
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
        try:  # read on the cluster's GPU nodes: the driver may have no GPU
            check_cluster_fit(generator_config, config.tp_size, sorted({r.resolution for r in todo}),
                              sorted({r.duration_s for r in todo})[-1:])
        except ValueError as exc:
            raise RunSetupError(str(exc)) from None
    return generator_config


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
    with LineageRun(
        LineageConfig.from_env(job_type.value.lower(), config.workdir), job_type,
        inputs=[briefs_dataset(config.briefs, BRIEF_ARROW_SCHEMA),
                checkpoint_dataset(config.model, config.checkpoint_dir),
                *([prompt_model_dataset(config.prompt_llm.url, config.prompt_llm.model)] if config.prompt_llm else [])],
        outputs=[dam_dataset(dam.uri)],
    ) as lineage:
        result = _run_campaign(config, dam, log, select)
        lineage.outputs = [dam_dataset(dam.uri, rows=len(result.manifest),
                                       file_count=sum(len(r.keys) for r in result.manifest),
                                       size_bytes=sum(sum(r.sizes.values()) for r in result.manifest))]
        if result.failed:
            lineage.fail(f"{len(result.failed)} of {len(result.manifest)} renders failed")
    return result


def _enhance(todo: list[RenderRequest], llm: PromptLLMConfig, dam: DAM,
             log: Callable[[str], None]) -> list[RenderRequest]:
    """The enhance stage: each distinct prompt input once, through at most llm.concurrency
    callers at a time."""
    inputs = distinct_inputs(todo, llm)
    enhanced = _concat(
        ray.data.from_arrow(inputs)
        .map_batches(EnhancePrompts, fn_constructor_kwargs={"config": llm, "dam": dam}, batch_size=1,
                     batch_format="pyarrow", num_cpus=0.25,
                     compute=ray.data.ActorPoolStrategy(min_size=1, max_size=llm.concurrency))
        .to_arrow_refs(), ENHANCED_SCHEMA)
    sources = Counter(s.split(":")[0] for s in enhanced.column("prompt_source").to_pylist())
    log(f"prompt LLM {llm.model}: {inputs.num_rows} distinct prompts, "
        + ", ".join(f"{n} {source}" for source, n in sorted(sources.items())))
    return apply_prompts(todo, enhanced, llm)


def _run_campaign(config: CampaignConfig, dam: DAM, log: Callable[[str], None],
                  select: Callable[[RenderRequest], bool] | None) -> CampaignResult:
    planned = plan(config.briefs, model_id=config.model, s3_endpoint=config.s3_endpoint,
                   checkpoint_dir=config.checkpoint_dir, prompt_llm=config.prompt_llm)
    write_plan(planned, config.workdir)
    log(f"planned {planned.requests.num_rows} renders from {planned.briefs_valid}/{planned.briefs_read} briefs "
        f"({planned.rejects.num_rows} rejects in {config.workdir / 'rejects.parquet'})")

    # The plan stays Arrow; only the renders this run acts on become RenderRequests.
    planned_table = planned.requests if select is None else selected_requests(planned.requests, select)
    if select is not None:
        log(f"{planned_table.num_rows} of {planned.requests.num_rows} renders selected")
    order = planned_table["render_id"].to_pylist()
    profile = CHANNEL_PROFILES[config.profile]
    made_with = model_fingerprint(GeneratorConfig(model=config.model, checkpoint_dir=config.checkpoint_dir))
    check = check_archived(dam, planned_table, made_with, profile, config.thresholds, config.verify, config.verify_seed)
    log(check.summary(config.verify))
    kept, redelivered = check.ids("skip"), check.ids("redeliver")
    manifest: dict[str, ManifestRow] = kept_manifest_rows(
        dam, list(requests_of(planned_table, kept).values()), check.records, config.thresholds)
    spool_dir = config.workdir.resolve() / "spool"
    waiting = spooled_renders(spool_dir)
    by_id = requests_of(planned_table, check.ids("render") | redelivered)
    redeliver = [r for r in by_id.values() if r.render_id in redelivered]
    # Finished clips a previous run could not archive: archived from the spool, without the model.
    spooled = {rid: table for rid, (table, made_under) in waiting.items()
               if rid in by_id and rid not in redelivered
               and made_under == delivery_fingerprint(made_with, profile, by_id[rid])}
    todo = [r for r in by_id.values() if r.render_id not in redelivered and r.render_id not in spooled]
    hold = config.deliver == "best"  # takes wait in the spool; the best of each group is archived at the end
    log(f"{len(manifest)} renders already in {dam.uri}, {len(spooled)} to archive from {spool_dir}, "
        f"{len(redeliver)} to re-deliver as {config.profile}, {len(todo)} to make")
    archive_stage = ArchiveRenders(dam, made_with, profile, spool_dir=spool_dir)
    render_archive = ArchiveRenders(dam, made_with, profile, spool_dir=spool_dir, hold=hold)
    merger = ManifestMerger(dam, planned.requests, config.manifest_merge_rows, config.manifest_merge_s)
    merger.rows.update(manifest)
    started, made = time.perf_counter(), 0
    if todo and config.prompt_llm is not None:
        todo = _enhance(todo, config.prompt_llm, dam, log)
        by_id.update({r.render_id: r for r in todo})

    def record(row: dict) -> None:
        nonlocal made
        request = by_id[row["render_id"]]
        this = manifest[request.render_id] = rendered_manifest_row(
            request, row, delivery_fingerprint(made_with, profile, request), config.thresholds)
        merger.add(this)
        made += 1
        log(f"[{made}/{len(spooled) + len(todo) + len(redeliver)}] {request.brief_id} {request.locale} {request.aspect_ratio} "
            f"{request.variant_id} t{request.take}: {this.status}"
            + (f", {this.review_status}" if this.review_status else "")
            + (f" ({this.error})" if this.error else "") + f"  {time.perf_counter() - started:.0f}s")

    def collect(dataset: ray.data.Dataset, expected: list[RenderRequest]) -> None:
        try:
            for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
                for row in batch.to_pylist():
                    record(row)
        except Exception as exc:  # noqa: BLE001 - retries spent (a process that died each time): rows, not a traceback
            # Ray Data cannot drop one block of a dead actor pool and go on, so every render
            # that did not come back fails with the reason; the next run makes them.
            reason = f"not rendered: the render stage stopped after {STAGE_RETRIES} retries: {describe_error(exc)}"
            for request in expected:
                if request.render_id not in manifest:
                    manifest[request.render_id] = manifest_row(request, "failed", error=reason)
                    merger.add(manifest[request.render_id])

    with merge_on_sigterm(merger):
        for table in spooled.values():
            for row in render_archive(table).to_pylist():
                record(row)
        if redeliver:
            blocks = [pa.Table.from_pylist([r.model_dump()], schema=RENDER_REQUEST_ARROW_SCHEMA) for r in redeliver]
            collect(ray.data.from_arrow(blocks)
                    .map_batches(RedeliverClips(dam, config.thresholds, profile), batch_format="pyarrow",
                                 batch_size=1, max_retries=STAGE_RETRIES)
                    .map_batches(archive_stage, batch_format="pyarrow", batch_size=1, num_cpus=0.5,
                                 max_retries=STAGE_RETRIES), redeliver)
        if todo:
            generator_config = _generator_config(config, todo)
            # One block per replica call, of one shape, so every replica of the pool gets work
            # and each call is one batch of equal latent sizes (small shapes packed to the budget).
            budget = token_budget(todo, config.batch_size, config.tokens_per_forward)
            blocks = [pa.Table.from_pylist([r.model_dump() for r in batch], schema=RENDER_REQUEST_ARROW_SCHEMA)
                      for batch in shape_batches(todo, config.batch_size, budget)]
            with replica_pool(config.tp_size, config.replicas, generator_config.device) as pool_args:
                collect(
                    ray.data.from_arrow(blocks)
                    .map_batches(
                        RenderClips,
                        fn_constructor_kwargs={"generator_config": generator_config, "thresholds": config.thresholds,
                                               "profile": profile, "batch_size": config.batch_size,
                                               "tokens_per_forward": budget,
                                               "make_generator": replica_factory(config.tp_size,
                                                                                 generator_config.device)},
                        batch_size=None, batch_format="pyarrow",  # a block is one call
                        max_restarts=STAGE_RETRIES, max_task_retries=STAGE_RETRIES,
                        **pool_args,
                    )
                    .map_batches(render_archive, batch_format="pyarrow", batch_size=1, num_cpus=0.5,
                                 max_retries=STAGE_RETRIES), todo)
        if hold:
            waiting = spooled_renders(spool_dir)
            for render_id in best_held_takes([manifest[rid] for rid in order]):
                record(archive_stage(waiting[render_id][0]).to_pylist()[0])

        rows = mark_best_takes([manifest[rid] for rid in order])
        manifest_path, sheet_path = write_reports(rows, dam, config.workdir, merger)
    return CampaignResult(planned, rows, manifest_path, sheet_path, dam.uri)
