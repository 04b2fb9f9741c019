"""`paddock doctor`: check the environment a job will run in before anyone spends GPU time on it.

One row per check: what was found, and the fix where it fails. A row fails
only where the job as configured would fail (no GPU is a note for the tiny
model or `--device cpu`; no RAY_ADDRESS means a local instance, which is fine).
Then the memory table of one replica at `--tp` (model/memory.py, from the
architecture alone): one line per rank, `rank N  weights X.X GB ...`, and the
estimated peak per resolution and duration with the GPU sizes it fits.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict

Status = Literal["ok", "note", "FAIL"]
WEIGHT_SUFFIXES = (".safetensors", ".safetensors.zst", ".pth", ".ckpt", ".bin")
PROBE_PREFIX = ".paddock-doctor"


class DoctorSettings(BaseModel):
    """What the job will be run with: the flags `paddock doctor` shares with `run`."""

    model_config = ConfigDict(extra="forbid")

    model: str = "tiny"
    device: str = "auto"
    checkpoint_dir: Path | None = None
    dam: str | None = None
    s3_endpoint: str | None = None
    address: str | None = None
    tp: int = 1
    text_encoder_device: str | None = None


@dataclass
class Row:
    check: str
    status: Status
    found: str
    fix: str = ""


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.1f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.1f} MiB"


def check_ffmpeg_row() -> Row:
    from pipeline.media import FFmpegSetupError, ffmpeg_exe, probe_ffmpeg

    try:
        info = probe_ffmpeg(ffmpeg_exe())
    except FFmpegSetupError as exc:
        return Row("ffmpeg", "FAIL", str(exc), "install ffmpeg (apt-get install ffmpeg) or set PADDOCK_FFMPEG")
    if info.ok:
        return Row("ffmpeg", "ok", f"{info.path} {info.version}: libx264, aac, loudnorm and the formats mux uses")
    return Row("ffmpeg", "FAIL", info.problem() or "", "install ffmpeg (apt-get install ffmpeg) or set PADDOCK_FFMPEG")


def _needs_gpu(settings: DoctorSettings) -> bool:
    return settings.device.startswith("cuda") or (settings.device == "auto" and settings.model != "tiny")


def check_torch_row(settings: DoctorSettings, cluster_gpus: float | None) -> Row:
    import torch

    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
        names = ", ".join(f"{p.name} {_gib(p.total_memory)}" for p in gpus)
        return Row("torch / CUDA", "ok", f"torch {torch.__version__}, CUDA {torch.version.cuda}: {names}")
    found = f"torch {torch.__version__}, no CUDA GPU on this machine"
    if cluster_gpus:
        return Row("torch / CUDA", "ok", f"{found}; the Ray cluster has {cluster_gpus:g} GPUs")
    if _needs_gpu(settings):
        return Row("torch / CUDA", "FAIL", f"{found}; --model {settings.model} --device {settings.device} needs GPUs",
                   "run on a GPU machine or cluster (RAY_ADDRESS / --address), or use --model tiny / --device cpu")
    return Row("torch / CUDA", "note", f"{found} (fine for --model {settings.model} --device {settings.device})")


def check_ray_row(settings: DoctorSettings) -> tuple[Row, float | None]:
    """Reachable cluster and its CPUs/GPUs; returns the cluster's GPU count when it was reached."""
    address = settings.address or os.environ.get("RAY_ADDRESS")
    if not address:
        return Row("Ray", "ok", f"no RAY_ADDRESS: a local instance will start ({os.cpu_count()} CPUs)"), None
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        return Row("Ray", "FAIL", f"address {address!r} has no host:port", "give --address HEAD:6379"), None
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        return Row("Ray", "FAIL", f"{address}: {exc}", "start the cluster or fix RAY_ADDRESS / --address"), None
    import ray

    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        resources = ray.cluster_resources()
    except Exception as exc:  # noqa: BLE001 - any failure to join is this row's finding
        return Row("Ray", "FAIL", f"{address}: {exc}".splitlines()[0], "check the cluster's Ray version and address"), None
    finally:
        if ray.is_initialized():
            ray.shutdown()
    gpus = resources.get("GPU", 0.0)
    return Row("Ray", "ok", f"{address}: {resources.get('CPU', 0):g} CPUs, {gpus:g} GPUs"), gpus


def _safetensors_dtypes(path: Path) -> set[str]:
    """The dtypes a safetensors file's header lists (the header only; a .zst file is read up to its end)."""
    if path.name.endswith(".zst"):
        import zstandard

        with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = handle.read(length)
    else:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = handle.read(length)
    return {v["dtype"] for k, v in json.loads(header).items() if k != "__metadata__"}


def describe_weights(folder: Path) -> tuple[int, str]:
    """(bytes on disk, dtypes) of the weight files in a component folder."""
    files = [p for p in folder.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
    dtypes: set[str] = set()
    for path in files:
        if ".safetensors" in path.name:
            try:
                dtypes |= _safetensors_dtypes(path)
            except (OSError, ValueError, struct.error) as exc:
                dtypes.add(f"unreadable header ({exc.__class__.__name__})")
        else:
            dtypes.add("pickled (dtype read at load)")
    return sum(p.stat().st_size for p in files), ", ".join(sorted(dtypes)) or "no weight files"


def check_model_rows(settings: DoctorSettings) -> list[Row]:
    from model.presets import get_preset

    preset = get_preset(settings.model)
    if preset.tiny is not None:
        return [Row("model", "ok", f"{settings.model}: random weights built in memory, nothing to load")]
    if settings.checkpoint_dir is None:
        return [Row("model", "FAIL", f"{settings.model} needs its released weights",
                    "give --checkpoint-dir DIR holding " + ", ".join(f"{f}/" for f in preset.folders.values()))]
    rows = []
    for component, folder in preset.folders.items():
        path = settings.checkpoint_dir / folder
        if not path.is_dir() and component == "turbo_vae":  # optional: decoder "auto" falls back to the full one
            rows.append(Row(f"model: {component}", "note", f"{path} is missing: clips decode with the full Wan2.2 decoder",
                            f"download GAIR/daVinci-MagiHuman turbo_vae/ into {path} for the faster distilled decoder"))
            continue
        if not path.is_dir():
            rows.append(Row(f"model: {component}", "FAIL", f"{path} is missing",
                            f"download it into {path} (see README: Real weights)"))
            continue
        size, dtypes = describe_weights(path)
        status: Status = "ok" if size else "FAIL"
        rows.append(Row(f"model: {component}", status, f"{path}: {_gib(size)} on disk, {dtypes}",
                        "" if size else f"{path} holds no weight files; download them again"))
    return rows


def check_dam_row(settings: DoctorSettings) -> Row:
    from pipeline.dam import DAMError, open_dam

    uri = settings.dam or "./dam"
    try:
        # two tries, not the job's eight: an endpoint that is down should fail this row in seconds
        dam = open_dam(uri, s3_endpoint=settings.s3_endpoint, **({"max_attempts": 2} if uri.startswith("s3://") else {}))
        key = f"{PROBE_PREFIX}/{uuid.uuid4().hex}.txt"
        payload = f"paddock doctor probe {uuid.uuid4().hex}".encode()
        dam.put_bytes(key, payload, content_type="text/plain")
        try:
            if dam.get_bytes(key) != payload:
                return Row("DAM", "FAIL", f"{dam.uri}: the probe object read back different bytes",
                           "check the store's consistency and any proxy in front of it")
        finally:
            dam.delete(key)
    except (DAMError, OSError) as exc:
        return Row("DAM", "FAIL", str(exc).splitlines()[0],
                   "fix the DAM URI, --s3-endpoint or credentials, or make the prefix writable")
    return Row("DAM", "ok", f"{dam.uri}: wrote, read back and deleted a probe object")


def check_lineage_row() -> Row:
    url = os.environ.get("OPENLINEAGE_URL")
    if not url:
        return Row("lineage", "ok", "OPENLINEAGE_URL not set: events go to <workdir>/lineage.jsonl")
    import requests

    try:
        response = requests.get(url, timeout=5)
    except requests.RequestException as exc:
        return Row("lineage", "FAIL", f"{url}: {exc.__class__.__name__}",
                   "start the OpenLineage endpoint or fix/unset OPENLINEAGE_URL")
    return Row("lineage", "ok", f"{url}: answers (HTTP {response.status_code})")


def memory_table(settings: DoctorSettings) -> tuple[Row, list[str]]:
    """The memory row and table of one replica as the job would build it (no weights read)."""
    from model.generator import GeneratorConfig
    from model.memory import CONTEXT_BYTES, GPU_SIZES_GB, clip_peaks, replica_memory

    device = "cuda" if _needs_gpu(settings) else "cpu"
    try:
        config = GeneratorConfig(model=settings.model, checkpoint_dir=settings.checkpoint_dir, device=device,
                                 text_encoder_device=settings.text_encoder_device)
        ranks = replica_memory(config, settings.tp)
    except ValueError as exc:
        return Row("memory", "FAIL", str(exc).splitlines()[0], "fix --tp or --text-encoder-device"), []
    peaks = clip_peaks(config, settings.tp, ranks)
    text_where = "host (CPU)" if any(r.host_bytes for r in ranks) else device
    lines = [f"memory per rank: {settings.model} at --tp {settings.tp}, {str(config.torch_dtype()).removeprefix('torch.')} "
             f"on {device}, text encoder on rank 0's {text_where}; from the architecture alone, no weights read"]
    for r in ranks:
        parts = ", ".join(f"{name} {b / 1e9:.2f}" for name, b in r.device_bytes.items())
        host = "".join(f"; on the host: {name} {b / 1e9:.2f} GB" for name, b in r.host_bytes.items())
        lines.append(f"rank {r.rank}  weights {r.weights() / 1e9:.1f} GB  ({parts}{host})")
    lines.append(f"peak of the heaviest rank per 16:9 clip (weights it loads for that size + activations estimate + "
                 f"{CONTEXT_BYTES / 2**30:.1f} GiB context), GB:")
    lines.append(f"{'resolution':<10}  {'length':>6}  {'DiT act':>7}  {'decode act':>10}  {'peak':>6}  fits on (GB cards)")
    for p in peaks:
        fits = " ".join(str(g) for g in GPU_SIZES_GB if p.fits(g)) or "none"
        lines.append(f"{p.resolution:<10}  {p.duration_s:>4} s  {p.dit_bytes / 1e9:>7.1f}  {p.decode_bytes / 1e9:>10.1f}  "
                     f"{p.peak_bytes / 1e9:>6.1f}  {fits}")
    worst = max(peaks, key=lambda p: p.peak_bytes)
    smallest = next((g for g in GPU_SIZES_GB if worst.fits(g)), None)
    found = (f"--tp {settings.tp}: every size fits on {smallest} GB cards" if smallest else
             f"--tp {settings.tp}: {worst.resolution} {worst.duration_s} s fits none of {GPU_SIZES_GB} GB")
    return Row("memory", "ok" if smallest else "note", found,
               "" if smallest else "raise --tp or set --text-encoder-device cpu"), lines


def run_checks(settings: DoctorSettings) -> list[Row]:
    ray_row, cluster_gpus = check_ray_row(settings)
    return [
        check_ffmpeg_row(),
        check_torch_row(settings, cluster_gpus),
        ray_row,
        *check_model_rows(settings),
        check_dam_row(settings),
        check_lineage_row(),
    ]


def format_table(rows: list[Row]) -> str:
    width = max(len(r.check) for r in rows)
    lines = [f"{'check':<{width}}  {'status':<6}  found"]
    for row in rows:
        lines.append(f"{row.check:<{width}}  {row.status:<6}  {row.found}")
        if row.fix:
            lines.append(f"{'':<{width}}  {'':<6}  fix: {row.fix}")
    return "\n".join(lines)


def doctor(settings: DoctorSettings, out: Callable[[str], None] = print) -> int:
    """Print the table; 0 when no row failed, 1 otherwise."""
    rows = run_checks(settings)
    memory_row, memory_lines = memory_table(settings)
    rows.append(memory_row)
    out(format_table(rows))
    if memory_lines:
        out("\n" + "\n".join(memory_lines))
    failed = [r for r in rows if r.status == "FAIL"]
    out(f"\n{len(rows) - len(failed)} of {len(rows)} checks passed" + (f"; {len(failed)} failed" if failed else ""))
    return 1 if failed else 0
