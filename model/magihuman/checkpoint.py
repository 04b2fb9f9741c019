"""Loading (and writing) MagiHuman DiT checkpoints in the released safetensors layout: the one DiT
loader, for one process and for a tensor-parallel rank's slices (plan in model/parallel.py).

A checkpoint directory holds `model.safetensors`, or shards listed in
`model.safetensors.index.json`; any of these files may instead be zstd-compressed as
`<name>.zst`. Tensors are read lazily with `safe_open`, one shard at a time, straight into a
model built without memory on the meta device, so a process never holds the checkpoint twice.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import torch
import zstandard
from safetensors import safe_open
from safetensors.torch import save_file

from .config import PRESETS, ArchConfig, resolve_arch
from .dit import MagiHumanDiT

if TYPE_CHECKING:
    from ..parallel import TPGroup

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
# Buffers a checkpoint may leave out because the model recomputes them.
OPTIONAL_KEYS = frozenset({"adapter.rope.bands"})

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class CheckpointError(ValueError):
    """A checkpoint directory that does not fit the model; the message names the file or parameter."""


@dataclass
class LoadReport:
    """What one process read: the files, the tensors loaded and ignored, and the bytes of the
    tensors it read in full (replicated) and of its slices of the sharded ones."""

    checkpoint_dir: str
    rank: int = 0
    world_size: int = 1
    files: list[str] = field(default_factory=list)
    loaded: int = 0
    ignored: list[str] = field(default_factory=list)  # tensors of the checkpoint the model does not use
    casts: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (dtype on disk, dtype in the model)
    sharded_bytes: int = 0
    replicated_bytes: int = 0

    @property
    def bytes_read(self) -> int:
        return self.sharded_bytes + self.replicated_bytes


class CheckpointReader:
    """Lazy access to the tensors of a checkpoint directory, shard by shard."""

    def __init__(self, checkpoint_dir: str | Path, scratch_dir: str | Path | None = None):
        self.dir = Path(checkpoint_dir)
        self.scratch_dir = scratch_dir
        if not self.dir.is_dir():
            raise CheckpointError(f"checkpoint directory {self.dir} does not exist")
        index = self.dir / INDEX_FILE
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as err:
                raise CheckpointError(f"{index}: not a safetensors index with a 'weight_map' ({err})") from err
            self.shards: dict[str, list[str]] = {}
            for name, shard in weight_map.items():
                self.shards.setdefault(shard, []).append(name)
        elif self._locate(SINGLE_FILE) is not None:
            self.shards = {SINGLE_FILE: []}  # names come from the file itself
        else:
            raise CheckpointError(
                f"{self.dir} holds no {SINGLE_FILE}, {SINGLE_FILE}.zst or {INDEX_FILE}; point load_dit at a DiT checkpoint directory"
            )
        for shard, names in self.shards.items():
            if self._locate(shard) is None:
                listed = f" (holds {names[0]} and {len(names) - 1} more)" if names else ""
                raise CheckpointError(f"checkpoint shard {self.dir / shard} (or {shard}.zst) is missing{listed}")

    def _locate(self, shard: str) -> Path | None:
        for path in (self.dir / shard, self.dir / f"{shard}.zst"):
            if path.exists():
                return path
        return None

    @contextmanager
    def open_shard(self, shard: str) -> Iterator[Any]:
        """A `safe_open` handle on one shard; a .zst shard is streamed to a scratch file first."""
        path = self._locate(shard)
        if path.suffix != ".zst":
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                yield handle
            return
        self._check_scratch_space(path)
        fd, scratch = tempfile.mkstemp(suffix=".safetensors", dir=self.scratch_dir)
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                zstandard.ZstdDecompressor().copy_stream(src, out)
            with safe_open(scratch, framework="pt", device="cpu") as handle:
                yield handle
        except zstandard.ZstdError as err:
            raise CheckpointError(f"{path}: zstd decompression failed ({err})") from err
        finally:
            os.unlink(scratch)

    def _check_scratch_space(self, path: Path) -> None:
        """Before decompressing: the scratch folder must hold the whole shard (its frame header's
        size; the compressed size when the header has none), else name the folder and the fix."""
        folder = Path(self.scratch_dir or tempfile.gettempdir())
        with open(path, "rb") as src:
            header = src.read(18)
        try:
            needed = zstandard.frame_content_size(header)
        except zstandard.ZstdError:
            needed = -1
        needed = needed if needed > 0 else path.stat().st_size
        free = shutil.disk_usage(folder).free
        if free < needed:
            raise CheckpointError(
                f"{path}: decompressing needs {needed / 2**30:.1f} GiB in {folder}, which has {free / 2**30:.1f} GiB "
                "free; point TMPDIR at a folder with room (each replica decompresses its own copy), or decompress "
                "the shards once beforehand (zstd -d)")

    def iter_tensors(self) -> Iterator[tuple[str, str, Any]]:
        """(name, shard, slice) for every tensor; `slice.get_shape()` / `get_dtype()` are free, `slice[:]` reads it."""
        for shard, names in self.shards.items():
            with self.open_shard(shard) as handle:
                present = set(handle.keys())
                for name in names or sorted(present):
                    if name not in present:
                        raise CheckpointError(f"{INDEX_FILE} puts {name!r} in {shard}, but that shard does not hold it")
                    yield name, shard, handle.get_slice(name)


def checkpoint_arch(
    checkpoint_dir: str | Path | None,
    arch: ArchConfig | str | dict | None = None,
    fallback: ArchConfig | None = None,
    layout: ArchConfig | None = None,
) -> ArchConfig:
    """The architecture to build: `arch` when given; else the folder's config.json when it is in
    paddock's format (ArchConfig.is_arch_json: what save_checkpoint writes, or the reference's
    ModelConfig fields, flat or under `arch` / `arch_config`); else `fallback` (a preset). A
    config.json of another format (a released folder's own) is not taken as the architecture.
    With `layout`, the token layout (coordinates, frame-local attention) comes from it whatever
    the folder says, as the reference hard-codes it for its super-resolution models."""
    chosen = _folder_arch(checkpoint_dir, arch, fallback)
    return chosen.with_layout_of(layout) if layout is not None else chosen


def _folder_arch(checkpoint_dir: str | Path | None, arch: ArchConfig | str | dict | None,
                 fallback: ArchConfig | None) -> ArchConfig:
    if arch is not None:
        return resolve_arch(arch)
    fix = f"pass arch= a preset name ({', '.join(sorted(PRESETS))}), a dict or an ArchConfig"
    config = Path(checkpoint_dir) / CONFIG_FILE if checkpoint_dir is not None else None
    if config is not None and config.is_file():
        try:
            data = json.loads(config.read_text())
        except ValueError as err:
            raise CheckpointError(f"{config}: not JSON ({err}); fix or remove it, or {fix}") from err
        if ArchConfig.is_arch_json(data):
            try:
                return ArchConfig.from_dict(data)
            except (ValueError, TypeError) as err:
                raise CheckpointError(f"{config}: {err}") from err
        if fallback is not None:
            log.info("%s is not in paddock's architecture format; using the preset's architecture", config)
            return fallback
        raise CheckpointError(f"{config} is not in paddock's architecture format (it lacks num_layers, hidden_size "
                              f"or head_dim, or has fields ArchConfig does not know); {fix}")
    if fallback is not None:
        return fallback
    where = f"{checkpoint_dir} has no {CONFIG_FILE}" if checkpoint_dir is not None else "no checkpoint_dir given"
    raise CheckpointError(f"{where}; {fix}")


@torch.no_grad()
def load_dit(
    checkpoint_dir: str | Path | None,
    arch: ArchConfig | str | dict | None = None,
    device: str | torch.device = "cpu",
    compute_dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    scratch_dir: str | Path | None = None,
    tp: TPGroup | None = None,
) -> MagiHumanDiT:
    """This rank's DiT (the whole model at tp size 1), filled from `checkpoint_dir`, or random
    weights from `seed` when it is None.

    Under tensor parallelism (model/parallel.py's plan) each rank reads only its slice of every
    sharded tensor; random weights are drawn for the whole model, then sliced, so every tp size
    makes the same model. Missing parameters, wrong shapes and non-floating dtypes raise
    CheckpointError naming the parameter; any floating dtype on disk is cast to the dtype the
    model keeps the tensor in (bf16 linears; fp32 norms, embedders, adapter and final layers), and
    tensors the model does not use are logged and ignored, as the reference's `load_state_dict`
    copy does (`load_report.casts`, `load_report.ignored`). The result is in eval mode without
    gradients and carries `load_report` (a LoadReport) and `tp` (None: one process).
    """
    # model.parallel builds on the DiT's layers, so it is imported at call time: either package may be imported first.
    from ..parallel import TPGroup, check_tp_size

    tp = tp or TPGroup()
    arch = checkpoint_arch(checkpoint_dir, arch)
    check_tp_size(arch, tp.world_size)
    model = _empty_dit(arch, tp, device, compute_dtype)
    report = LoadReport(checkpoint_dir=str(checkpoint_dir or ""), rank=tp.rank, world_size=tp.world_size)
    if checkpoint_dir is None:
        if tp.world_size == 1:
            model.init_weights(seed)
        else:
            full = MagiHumanDiT(arch, compute_dtype=compute_dtype)
            full.init_weights(seed)
            fill_dit(model, ((name, "", tensor) for name, tensor in full.state_dict().items()), report)
    else:
        fill_dit(model, CheckpointReader(checkpoint_dir, scratch_dir=scratch_dir).iter_tensors(), report)
        log.info("rank %d/%d read %d tensors, %.1f MB (%.1f MB of them sliced) from %s (%s); %d cast to the model's dtypes",
                 tp.rank, tp.world_size, report.loaded, report.bytes_read / 1e6, report.sharded_bytes / 1e6,
                 checkpoint_dir, ", ".join(report.files), len(report.casts))
    model.load_report = report
    return model


def _empty_dit(arch: ArchConfig, tp: TPGroup, device: str | torch.device, compute_dtype: torch.dtype) -> MagiHumanDiT:
    """This rank's DiT with uninitialized weights on `device` (built on the meta device, so no
    memory is touched twice), in eval mode without gradients."""
    from ..parallel import parallelize_dit

    with torch.device("meta"):
        model = MagiHumanDiT(arch, compute_dtype=compute_dtype)
        if tp.world_size > 1:
            parallelize_dit(model, tp)
    model.tp = tp
    model.to_empty(device=torch.device(device))
    model.adapter.rope.reset_bands()
    return model.eval().requires_grad_(False)


def _shape(source: Any) -> list[int]:
    return list(source.get_shape()) if hasattr(source, "get_shape") else list(source.shape)


def _dtype(source: Any) -> torch.dtype | None:
    return _SAFETENSORS_DTYPES.get(source.get_dtype()) if hasattr(source, "get_dtype") else source.dtype


def _dtype_name(source: Any) -> str:
    return source.get_dtype() if hasattr(source, "get_dtype") else str(source.dtype)


@torch.no_grad()
def fill_dit(model: MagiHumanDiT, tensors: Iterable[tuple[str, str, Any]], report: LoadReport) -> None:
    """Copy (name, file, source) tensors into `model`, a safetensors slice or an in-memory tensor
    each; of the tensors the sharding plan slices, only this rank's part is read."""
    from ..parallel import sliced_weights

    targets = dict(model.state_dict(keep_vars=True))
    sliced = sliced_weights(model)
    seen: set[str] = set()
    for name, file, source in tensors:
        target = targets.get(name)
        if target is None:
            report.ignored.append(name)
            continue
        if file and file not in report.files:
            report.files.append(file)
        layer = sliced.get(name)
        expected = layer.full_weight_shape if layer is not None else list(target.shape)
        if _shape(source) != expected:
            raise CheckpointError(
                f"parameter {name!r} in {file or 'the source model'} has shape {_shape(source)}, the architecture "
                f"expects {expected}; check the arch (config.json or preset) matches the checkpoint"
            )
        stored = _dtype(source)
        if stored is None or not stored.is_floating_point:
            raise CheckpointError(
                f"parameter {name!r} in {file or 'the source model'} has dtype {_dtype_name(source)}; the model keeps it "
                f"as {target.dtype}, so the checkpoint must store it in a floating dtype"
            )
        if stored != target.dtype:  # released folders differ (fp32 distill / SR, bf16 base): cast as the reference's load does
            report.casts[name] = (str(stored).removeprefix("torch."), str(target.dtype).removeprefix("torch."))
        value = layer.read_shard(source) if layer is not None else source[:]
        nbytes = value.numel() * value.element_size()
        if layer is not None:
            report.sharded_bytes += nbytes
        else:
            report.replicated_bytes += nbytes
        target.copy_(value)  # casts to the model's dtype
        seen.add(name)
    report.loaded = len(seen)
    missing = sorted(set(targets) - seen - OPTIONAL_KEYS)
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise CheckpointError(f"checkpoint {report.checkpoint_dir} lacks {len(missing)} parameters of the model: {shown}")
    if report.ignored:
        log.warning("checkpoint %s holds %d tensors the model does not use, ignored: %s", report.checkpoint_dir,
                    len(report.ignored), report.ignored[:8])


def save_checkpoint(
    state_dict: dict[str, torch.Tensor],
    checkpoint_dir: str | Path,
    arch: ArchConfig | None = None,
    max_shard_bytes: int | None = None,
    compress: bool = False,
) -> Path:
    """Write `state_dict` in the released layout: one model.safetensors, or shards of at most
    `max_shard_bytes` with an index; `compress` replaces each file by its .zst; `arch` goes to config.json."""
    out = Path(checkpoint_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if max_shard_bytes is not None and groups[-1] and size + nbytes > max_shard_bytes:
            groups.append({})
            size = 0
        groups[-1][name] = tensor
        size += nbytes
    if max_shard_bytes is None:
        files = {SINGLE_FILE: groups[0]}
    else:
        files = {f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors": g for i, g in enumerate(groups)}
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
            "weight_map": {name: shard for shard, g in files.items() for name in g},
        }
        (out / INDEX_FILE).write_text(json.dumps(index, indent=1))
    for shard, group in files.items():
        save_file(group, str(out / shard))
        if compress:
            with open(out / shard, "rb") as src, open(out / f"{shard}.zst", "wb") as dst:
                zstandard.ZstdCompressor().copy_stream(src, dst)
            (out / shard).unlink()
    if arch is not None:
        (out / CONFIG_FILE).write_text(json.dumps(arch.to_dict(), indent=1))
    return out
