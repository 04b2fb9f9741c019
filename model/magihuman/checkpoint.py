"""Loading (and writing) MagiHuman DiT checkpoints in the released safetensors layout.

A checkpoint directory holds `model.safetensors`, or shards listed in
`model.safetensors.index.json`; any of these files may instead be zstd-compressed as
`<name>.zst`. Tensors are read lazily with `safe_open`, one shard at a time, straight into a
model built without memory on the meta device, so a process never holds the checkpoint twice.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import zstandard
from safetensors import safe_open
from safetensors.torch import save_file

from .config import ArchConfig, resolve_arch, PRESETS
from .dit import MagiHumanDiT

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
# Buffers a checkpoint may leave out because the model recomputes them.
OPTIONAL_KEYS = frozenset({"adapter.rope.bands"})

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
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
    checkpoint_dir: str
    files: list[str] = field(default_factory=list)
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


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

    def iter_tensors(self) -> Iterator[tuple[str, str, Any]]:
        """(name, shard, slice) for every tensor; `slice.get_shape()` / `get_dtype()` are free, `slice[:]` reads it."""
        for shard, names in self.shards.items():
            with self.open_shard(shard) as handle:
                present = set(handle.keys())
                for name in names or sorted(present):
                    if name not in present:
                        raise CheckpointError(f"{INDEX_FILE} puts {name!r} in {shard}, but that shard does not hold it")
                    yield name, shard, handle.get_slice(name)


def checkpoint_arch(checkpoint_dir: str | Path | None, arch: ArchConfig | str | dict | None) -> ArchConfig:
    """The architecture to build: `arch` when given, else the directory's config.json."""
    if arch is not None:
        return resolve_arch(arch)
    if checkpoint_dir is not None and (Path(checkpoint_dir) / CONFIG_FILE).exists():
        return ArchConfig.from_json(Path(checkpoint_dir) / CONFIG_FILE)
    where = f"{checkpoint_dir} has no {CONFIG_FILE}" if checkpoint_dir is not None else "no checkpoint_dir given"
    raise CheckpointError(f"{where}; pass arch= a preset name ({', '.join(sorted(PRESETS))}), a dict or an ArchConfig")


@torch.no_grad()
def load_dit(
    checkpoint_dir: str | Path | None,
    arch: ArchConfig | str | dict | None = None,
    device: str | torch.device = "cpu",
    compute_dtype: torch.dtype = torch.bfloat16,
    strict: bool = True,
    seed: int = 0,
    scratch_dir: str | Path | None = None,
) -> MagiHumanDiT:
    """Build the DiT and fill it from `checkpoint_dir` (or random weights from `seed` when it is None).

    Missing parameters, wrong shapes or dtypes raise CheckpointError naming the parameter;
    tensors the model does not have raise too when `strict`, else they are logged. The result
    is in eval mode without gradients; `model.load_report` lists what was read.
    """
    arch = checkpoint_arch(checkpoint_dir, arch)
    device = torch.device(device)
    with torch.device("meta"):
        model = MagiHumanDiT(arch, compute_dtype=compute_dtype)
    model.to_empty(device=device)
    model.adapter.rope.reset_bands()
    model.eval().requires_grad_(False)
    if checkpoint_dir is None:
        model.init_weights(seed)
        model.load_report = LoadReport(checkpoint_dir="")
        return model

    report = LoadReport(checkpoint_dir=str(checkpoint_dir))
    targets = dict(model.state_dict(keep_vars=True))
    reader = CheckpointReader(checkpoint_dir, scratch_dir=scratch_dir)
    seen: set[str] = set()
    for name, shard, tensor_slice in reader.iter_tensors():
        if shard not in report.files:
            report.files.append(shard)
        target = targets.get(name)
        if target is None:
            report.unexpected.append(name)
            continue
        shape, dtype = list(tensor_slice.get_shape()), tensor_slice.get_dtype()
        if shape != list(target.shape):
            raise CheckpointError(
                f"parameter {name!r} in {shard} has shape {shape}, the architecture expects {list(target.shape)}; "
                f"check the arch (config.json or preset) matches the checkpoint"
            )
        if _SAFETENSORS_DTYPES.get(dtype) != target.dtype:
            raise CheckpointError(f"parameter {name!r} in {shard} has dtype {dtype}, expected {target.dtype}")
        target.copy_(tensor_slice[:])
        seen.add(name)
    report.loaded = len(seen)
    report.missing = sorted(set(targets) - seen - OPTIONAL_KEYS)
    model.load_report = report
    if report.missing:
        shown = ", ".join(report.missing[:8]) + (f" and {len(report.missing) - 8} more" if len(report.missing) > 8 else "")
        raise CheckpointError(f"checkpoint {checkpoint_dir} lacks {len(report.missing)} parameters of the model: {shown}")
    if report.unexpected:
        message = f"checkpoint {checkpoint_dir} holds {len(report.unexpected)} tensors the model does not have: {report.unexpected[:8]}"
        if strict:
            raise CheckpointError(message + "; check the arch, or pass strict=False to ignore them")
        log.warning(message)
    log.info("loaded %d tensors from %s (%s)", report.loaded, checkpoint_dir, ", ".join(report.files))
    return model


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
