"""OpenLineage run events for paddock jobs.

One job run emits START, then COMPLETE or FAIL (with the error). Inputs are the
briefs file (with its column schema) and the model checkpoint; the output is the
DAM prefix, with row and byte counts once the run is done.

Events go to ``<workdir>/lineage.jsonl`` (one JSON event a line) unless
``OPENLINEAGE_URL`` is set, then to that OpenLineage HTTP endpoint (Marquez and
other ``/api/v1/lineage`` receivers), with ``OPENLINEAGE_API_KEY`` as a bearer
token when given. ``OPENLINEAGE_DISABLED=true`` turns emission off.

Lineage is bookkeeping, not the product: a failure to emit an event (endpoint
down, disk full) is logged as a warning and never fails the job. A malformed
configuration (an ``OPENLINEAGE_URL`` that is not an http(s) URL) is an error
when the config is made, before any work starts.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote, urlparse

import attr
import pyarrow as pa
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    DatasetFacet,
    error_message_run,
    input_statistics_input_dataset,
    job_type_job,
    output_statistics_output_dataset,
    processing_engine_run,
    schema_dataset,
)
from openlineage.client.naming.dataset import S3, LocalFileSystem
from openlineage.client.transport import Transport
from openlineage.client.transport.file import FileConfig, FileTransport
from openlineage.client.transport.http import HttpConfig, HttpTransport
from openlineage.client.uuid import generate_new_uuid

log = logging.getLogger(__name__)

LINEAGE_FILE = "lineage.jsonl"
DEFAULT_NAMESPACE = "paddock"


def _paddock_version() -> str:
    try:
        return metadata.version("paddock")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


PADDOCK_VERSION = _paddock_version()
DEFAULT_PRODUCER = f"https://github.com/paddock/paddock/tree/v{PADDOCK_VERSION}"


class JobType(str, Enum):
    """``jobType`` of the JobTypeJobFacet: which paddock entry point ran."""

    CAMPAIGN_BATCH = "CAMPAIGN_BATCH"
    LOCALIZATION = "LOCALIZATION"
    AD_HOC_RENDER = "AD_HOC_RENDER"
    REVIEW_DECISION = "REVIEW_DECISION"


@dataclass
class LineageConfig:
    """Where and under which names lineage events go.

    ``url`` set: HTTP transport to ``url`` + ``endpoint``; else a JSONL file at
    ``file_path``. Use :meth:`from_env` to fill the transport from the
    ``OPENLINEAGE_*`` environment variables.
    """

    job_name: str
    file_path: Path | None = None
    url: str | None = None
    endpoint: str = "api/v1/lineage"
    api_key: str | None = None
    timeout_s: float = 5.0
    # A lineage endpoint that is down should cost the job seconds, not minutes.
    http_retries: int = 2
    namespace: str = DEFAULT_NAMESPACE
    producer: str = DEFAULT_PRODUCER

    def __post_init__(self) -> None:
        if self.file_path is not None:
            self.file_path = Path(self.file_path)
        if not self.job_name:
            raise ValueError("LineageConfig.job_name is empty; name the job, e.g. 'campaign.<campaign_id>'")
        if self.url:
            parsed = urlparse(self.url)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ValueError(
                    f"OpenLineage URL {self.url!r} is not an http(s) URL; set OPENLINEAGE_URL to the "
                    "endpoint's base, e.g. http://marquez:5000, or unset it to write lineage.jsonl"
                )
        elif self.file_path is None:
            raise ValueError("LineageConfig needs file_path (a JSONL file) or url (an OpenLineage HTTP endpoint)")

    @classmethod
    def from_env(cls, job_name: str, workdir: str | os.PathLike, **overrides) -> LineageConfig:
        """HTTP when ``OPENLINEAGE_URL`` is set, else ``<workdir>/lineage.jsonl``.

        Also reads ``OPENLINEAGE_ENDPOINT``, ``OPENLINEAGE_API_KEY`` and
        ``OPENLINEAGE_NAMESPACE``; keyword overrides win over the environment.
        """
        env = os.environ
        values = {
            "job_name": job_name,
            "file_path": Path(workdir) / LINEAGE_FILE,
            "url": env.get("OPENLINEAGE_URL") or None,
            "endpoint": env.get("OPENLINEAGE_ENDPOINT") or "api/v1/lineage",
            "api_key": env.get("OPENLINEAGE_API_KEY") or None,
            "namespace": env.get("OPENLINEAGE_NAMESPACE") or DEFAULT_NAMESPACE,
        }
        values.update(overrides)
        return cls(**values)

    def transport(self) -> Transport:
        if self.url:
            params = {"url": self.url, "endpoint": self.endpoint, "timeout": self.timeout_s,
                      "retry": {"total": self.http_retries, "connect": self.http_retries,
                                "read": self.http_retries}}
            if self.api_key:
                params["auth"] = {"type": "api_key", "apiKey": self.api_key}
            return HttpTransport(HttpConfig.from_dict(params))
        try:
            self.file_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # the emit that follows fails too, and warns per event
            log.warning("cannot create the lineage directory %s: %s", self.file_path.parent, exc)
        # append=True keeps every event of every run in one JSONL file; the
        # library's default writes one timestamped file per event.
        return FileTransport(FileConfig(log_file_path=str(self.file_path), append=True))


# --------------------------------------------------------------------------- datasets


def _location(uri: str | os.PathLike) -> tuple[str, str]:
    """(namespace, name) of a file or prefix, by the OpenLineage naming rules."""
    text = os.fspath(uri)
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        naming = S3(bucket_name=parsed.netloc, object_key=unquote(parsed.path).lstrip("/") or "/")
        return naming.get_namespace(), naming.get_name()
    if parsed.scheme == "file":
        text = unquote(parsed.path)
    elif parsed.scheme and len(parsed.scheme) > 1:  # gs://, hf://, ...: keep scheme and authority
        return f"{parsed.scheme}://{parsed.netloc}", unquote(parsed.path) or "/"
    naming = LocalFileSystem(path=str(Path(text).expanduser().resolve()))
    return naming.get_namespace(), naming.get_name()


def _schema_fields(fields: Sequence[pa.Field]) -> list[schema_dataset.SchemaDatasetFacetFields]:
    out = []
    for f in fields:
        inner = f.type
        while pa.types.is_list(inner) or pa.types.is_large_list(inner):
            inner = inner.value_type
        nested = _schema_fields(list(inner)) if pa.types.is_struct(inner) else []
        out.append(schema_dataset.SchemaDatasetFacetFields(name=f.name, type=str(f.type), fields=nested or None))
    return out


def briefs_dataset(path: str | os.PathLike, arrow_schema: pa.Schema, rows: int | None = None,
                   producer: str = DEFAULT_PRODUCER) -> InputDataset:
    """The briefs Parquet file, with its column schema (nested columns included)."""
    namespace, name = _location(path)
    input_facets = {}
    if rows is not None:
        input_facets["inputStatistics"] = input_statistics_input_dataset.InputStatisticsInputDatasetFacet(
            rowCount=rows, producer=producer)
    return InputDataset(
        namespace=namespace, name=name,
        facets={"schema": schema_dataset.SchemaDatasetFacet(fields=_schema_fields(arrow_schema), producer=producer)},
        inputFacets=input_facets,
    )


@attr.define
class ModelDatasetFacet(DatasetFacet):
    """paddock's own facet on a checkpoint dataset: which model preset it holds."""

    modelId: str  # noqa: N815 (OpenLineage field names are camelCase)
    randomInit: bool = False  # noqa: N815
    _additional_skip_redact: ClassVar[list[str]] = ["modelId", "randomInit"]

    @staticmethod
    def _get_schema() -> str:
        return "https://github.com/paddock/paddock/blob/main/pipeline/lineage.py#ModelDatasetFacet"


def checkpoint_dataset(model_id: str, checkpoint_dir: str | os.PathLike | None = None,
                       producer: str = DEFAULT_PRODUCER) -> InputDataset:
    """The model weights a run used.

    With ``checkpoint_dir`` the dataset is that directory (local or s3://);
    without one (a preset with random weights, as in tests and the demo) it is
    ``<paddock>/model/<model_id>`` with ``randomInit`` set.
    """
    if checkpoint_dir is None:
        namespace, name, random_init = DEFAULT_NAMESPACE, f"model/{model_id}", True
    else:
        (namespace, name), random_init = _location(checkpoint_dir), False
    facet = ModelDatasetFacet(modelId=model_id, randomInit=random_init, producer=producer)
    return InputDataset(namespace=namespace, name=name, facets={"paddockModel": facet})


def prompt_model_dataset(url: str, model: str, producer: str = DEFAULT_PRODUCER) -> InputDataset:
    """The prompt LLM the enhance stage asked: its endpoint as the namespace, its model as the name."""
    scheme, _, rest = url.partition("://")
    facet = ModelDatasetFacet(modelId=model, producer=producer)
    return InputDataset(namespace=f"{scheme}://{rest.split('/')[0]}", name=f"prompt-llm/{model}",
                        facets={"paddockModel": facet})


def dam_dataset(dam_uri: str | os.PathLike, rows: int | None = None, size_bytes: int | None = None,
                file_count: int | None = None, producer: str = DEFAULT_PRODUCER) -> OutputDataset:
    """The DAM prefix a run archived into; pass the counts once they are known."""
    namespace, name = _location(dam_uri)
    output_facets = {}
    if rows is not None or size_bytes is not None or file_count is not None:
        output_facets["outputStatistics"] = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
            rowCount=rows, size=size_bytes, fileCount=file_count, producer=producer)
    return OutputDataset(namespace=namespace, name=name, outputFacets=output_facets)


# --------------------------------------------------------------------------- runs


@dataclass
class LineageRun:
    """One run of one job: ``start()``, then ``complete()`` or ``fail(error)``.

    As a context manager (how the jobs use it) it starts on entry, completes on
    a clean exit and emits FAIL (with the error message and stack trace) on an
    exception, which it re-raises. Set ``outputs`` inside the block to report
    final counts; call ``fail(reason)`` inside it to end the run as failed
    without raising (the exit then adds nothing)::

        with LineageRun(config, JobType.CAMPAIGN_BATCH, inputs=[...], outputs=[dam_dataset(uri)]) as run:
            ...
            run.outputs = [dam_dataset(uri, rows=n, size_bytes=b)]

    A run starts once and ends once: a second ``start()`` raises, and so does
    ``complete()`` or ``fail()`` after the run has ended or before it started.
    """

    config: LineageConfig
    job_type: JobType
    inputs: list[InputDataset] = field(default_factory=list)
    outputs: list[OutputDataset] = field(default_factory=list)
    run_id: str = field(default_factory=lambda: str(generate_new_uuid()))
    client: OpenLineageClient | None = None
    # The event types delivered so far, in order.
    emitted: list[str] = field(default_factory=list, init=False)
    # Whether START / an end event was sent (delivered or not): each is sent once.
    started: bool = field(default=False, init=False)
    ended: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.job_type = JobType(self.job_type)
        if self.client is None:
            self.client = OpenLineageClient(transport=self.config.transport())

    def _job(self) -> Job:
        facet = job_type_job.JobTypeJobFacet(processingType="BATCH", integration="RAY",
                                             jobType=self.job_type.value, producer=self.config.producer)
        return Job(namespace=self.config.namespace, name=self.config.job_name, facets={"jobType": facet})

    def _emit(self, state: RunState, run_facets: dict | None = None) -> bool:
        facets = {"processing_engine": processing_engine_run.ProcessingEngineRunFacet(
            version=PADDOCK_VERSION, name="paddock", producer=self.config.producer)}
        facets.update(run_facets or {})
        event = RunEvent(
            eventType=state,
            eventTime=datetime.now(timezone.utc).isoformat(),
            run=Run(runId=self.run_id, facets=facets),
            job=self._job(),
            inputs=list(self.inputs),
            outputs=list(self.outputs),
            producer=self.config.producer,
        )
        try:
            self.client.emit(event)
        except Exception as exc:  # noqa: BLE001 - lineage must never fail the job
            where = self.config.url or self.config.file_path
            log.warning("OpenLineage %s event for run %s of %s was not delivered to %s: %s; the job goes on",
                        state.value, self.run_id, self.config.job_name, where, exc)
            return False
        self.emitted.append(state.value)
        return True

    def start(self) -> bool:
        """Emit START. Returns whether the event was delivered."""
        if self.started:
            raise RuntimeError(f"lineage run {self.run_id} of {self.config.job_name} already started; "
                               "make a new LineageRun for another run")
        self.started = True
        return self._emit(RunState.START)

    def _end(self, state: RunState) -> None:
        if not self.started or self.ended:
            raise RuntimeError(f"lineage run {self.run_id} of {self.config.job_name}: {state.value} needs a run "
                               f"that started and has not ended ({'ended' if self.ended else 'not started'})")
        self.ended = True

    def complete(self, outputs: Sequence[OutputDataset] | None = None) -> bool:
        """Emit COMPLETE, with ``outputs`` (e.g. the DAM with its final counts) when given."""
        self._end(RunState.COMPLETE)
        if outputs is not None:
            self.outputs = list(outputs)
        return self._emit(RunState.COMPLETE)

    def fail(self, error: BaseException | str) -> bool:
        """Emit FAIL with the error message (and the stack trace of an exception)."""
        self._end(RunState.FAIL)
        if isinstance(error, BaseException):
            message = f"{type(error).__name__}: {error}"
            stack = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        else:
            message, stack = str(error), None
        facet = error_message_run.ErrorMessageRunFacet(message=message, programmingLanguage="PYTHON",
                                                       stackTrace=stack, producer=self.config.producer)
        return self._emit(RunState.FAIL, {"errorMessage": facet})

    def close(self) -> None:
        try:
            self.client.close()
        except Exception as exc:  # noqa: BLE001
            log.warning("closing the OpenLineage transport failed: %s", exc)

    def __enter__(self) -> LineageRun:
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if self.ended:
                pass  # fail(reason) inside the block already ended the run
            elif exc is None:
                self.complete()
            else:
                self.fail(exc)
        finally:
            self.close()
        return False  # never swallow the job's exception
