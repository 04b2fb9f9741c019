"""The one place that knows the stage order and the Ray Data calls."""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data.expressions import col

from pipeline.expand import ExpandBriefs
from pipeline.ingest import REJECTS_SCHEMA, reason_category, ValidateBriefs, first_row_by_brief_id, read_briefs_table
from schemas.render import RENDER_REQUEST_ARROW_SCHEMA

# Rows per Ray Data block when planning: large enough to amortize task
# overhead, small enough that both cores get work on a few thousand briefs.
PLAN_BLOCK_ROWS = 5_000


def ensure_ray(address: str | None = None) -> None:
    """Join the cluster at ``address`` (or RAY_ADDRESS), else start a local instance."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, include_dashboard=False, log_to_driver=True,
             logging_level="WARNING", configure_logging=True)
    ctx = ray.data.DataContext.get_current()
    # paddock prints its own progress; Ray Data's per-operator log lines drown it.
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True
    logging.getLogger("ray.data").setLevel(logging.WARNING)


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


def plan(briefs_path: str | Path, model_id: str) -> PlanResult:
    """ingest + expand: a briefs file in, render requests and rejects out."""
    table = read_briefs_table(briefs_path)
    ensure_ray()
    first_row_of = first_row_by_brief_id(
        table.column("brief_id").to_pylist() if "brief_id" in table.column_names else []
    )
    blocks = [table.slice(start, PLAN_BLOCK_ROWS) for start in range(0, max(table.num_rows, 1), PLAN_BLOCK_ROWS)]
    validated = (
        ray.data.from_arrow(blocks)
        .map_batches(ValidateBriefs(first_row_of), batch_format="pyarrow", batch_size=None)
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
