"""Megatron-style tensor parallelism for the MagiHuman DiT.

Each rank of a TP group of N holds:

- attention: hq / N query heads (rows of q and of the per-head gate in the fused
  [q | k | v | gate] projection) and the kv groups those heads read: hkv / N groups when
  N divides hkv, else (N a multiple of hkv) the one group, replicated on N / hkv ranks;
  the output projection keeps the matching input columns (row-parallel);
- MLP: a contiguous range of the intermediate dimension (for swiglu7, whole interleaved
  gate/linear row pairs) in the up projection and the same columns of the down projection;
- sandwich layers: the same ranges inside every modality's block of the fused tensor;
- everything else (adapter, norms, q/k norms, final layers) in full.

The two row-parallel projections end with one all-reduce each, so a layer costs two
all-reduces of [B, S, hidden]. Partial sums are reduced in fp32 and cast back to the compute
dtype, so TP adds no bf16 rounding of partial sums that TP=1 does not have.

Loading is sliced: each rank reads only its own rows / columns of every sharded tensor
(safetensors `get_slice`), so a rank reads about (sharded bytes) / N + (replicated bytes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.distributed as dist

from .magihuman.checkpoint import CheckpointError, CheckpointReader, OPTIONAL_KEYS, checkpoint_arch
from .magihuman.config import ArchConfig
from .magihuman.dit import MagiHumanDiT, ModalityLinear, TokenLayout

log = logging.getLogger(__name__)

Range = tuple[int, int]  # [start, stop) along one dim of a full tensor


@dataclass(frozen=True)
class TPGroup:
    """Where this process sits in its tensor-parallel group. `group` None is the default process group."""

    rank: int = 0
    world_size: int = 1
    group: Any = None

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank} must be in 0..{self.world_size - 1} (world_size={self.world_size})")


def even_range(total: int, world_size: int, rank: int) -> Range:
    """Rank's part of `total` items split as evenly as possible (the first `total % world_size` get one more)."""
    base, extra = divmod(total, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def check_tp_size(arch: ArchConfig, tp_size: int) -> None:
    """Raise ValueError unless the heads of `arch` split over `tp_size` ranks."""
    hq, hkv = arch.num_heads_q, arch.num_heads_kv
    if tp_size < 1:
        raise ValueError(f"tp_size={tp_size} must be >= 1")
    if hq % tp_size:
        raise ValueError(f"tp_size={tp_size} must divide the {hq} query heads (hidden_size / head_dim)")
    if hkv % tp_size and tp_size % hkv:
        raise ValueError(
            f"tp_size={tp_size} must divide the {hkv} kv groups or be a multiple of them (then each group is replicated)"
        )


@dataclass(frozen=True)
class HeadShard:
    q: Range  # query heads (and gates) of this rank
    kv: Range  # kv groups of this rank


def head_shard(arch: ArchConfig, tp: TPGroup) -> HeadShard:
    check_tp_size(arch, tp.world_size)
    hq, hkv, n = arch.num_heads_q, arch.num_heads_kv, tp.world_size
    q = (tp.rank * hq // n, (tp.rank + 1) * hq // n)
    if hkv % n == 0:
        kv = (tp.rank * hkv // n, (tp.rank + 1) * hkv // n)
    else:  # fewer groups than ranks: N / hkv consecutive ranks share (a copy of) one group
        group = tp.rank // (n // hkv)
        kv = (group, group + 1)
    return HeadShard(q=q, kv=kv)


# --------------------------------------------------------------------------------------------
# Parallel linear layers
# --------------------------------------------------------------------------------------------


class ColumnParallelLinear(ModalityLinear):
    """A ModalityLinear holding some output rows of the full layer: per modality, the concatenation of
    `row_ranges` of that modality's block. No communication; its output is this rank's features."""

    def __init__(self, in_features: int, full_out_features: int, row_ranges: list[Range], num_modalities: int,
                 compute_dtype: torch.dtype):
        super().__init__(in_features, sum(b - a for a, b in row_ranges), num_modalities, compute_dtype)
        self.full_out_features = full_out_features
        self.row_ranges = row_ranges

    def read_shard(self, source: Any) -> torch.Tensor:
        """This rank's rows of `source` (a safetensors slice or a tensor); only they are read."""
        pieces = [
            source[m * self.full_out_features + a : m * self.full_out_features + b]
            for m in range(self.num_modalities)
            for a, b in self.row_ranges
        ]
        return torch.cat(pieces) if len(pieces) > 1 else pieces[0]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rows={self.row_ranges} of {self.full_out_features}"


class RowParallelLinear(ModalityLinear):
    """A ModalityLinear holding input columns `col_range` of the full layer; sums the partial outputs
    of the group with one all-reduce (in fp32) so every rank ends with the full output."""

    def __init__(self, full_in_features: int, col_range: Range, out_features: int, num_modalities: int,
                 compute_dtype: torch.dtype, tp: TPGroup):
        super().__init__(col_range[1] - col_range[0], out_features, num_modalities, compute_dtype)
        self.full_in_features = full_in_features
        self.col_range = col_range
        self.tp = tp

    def read_shard(self, source: Any) -> torch.Tensor:
        """This rank's columns of `source` (a safetensors slice or a tensor); only they are read."""
        return source[:, self.col_range[0] : self.col_range[1]]

    def forward(self, x: torch.Tensor, layout: TokenLayout | None = None) -> torch.Tensor:
        out = super().forward(x, layout)
        if self.tp.world_size == 1:
            return out
        total = out.float()
        dist.all_reduce(total, group=self.tp.group)
        return total.to(out.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", cols={self.col_range} of {self.full_in_features}"


ParallelLinear = (ColumnParallelLinear, RowParallelLinear)


# --------------------------------------------------------------------------------------------
# Sharding the DiT
# --------------------------------------------------------------------------------------------


def parallelize_dit(model: MagiHumanDiT, tp: TPGroup) -> MagiHumanDiT:
    """Swap the attention and MLP projections of `model` for this rank's parallel layers, in place.

    Meant for a model on the meta device (the new layers are built on the device of the old
    ones, without values); fill it with `load_dit_shard`.
    """
    arch = model.arch
    heads = head_shard(arch, tp)
    d = arch.head_dim
    hq, hkv = arch.num_heads_q, arch.num_heads_kv
    for idx, layer in enumerate(model.block.layers):
        m = arch.num_modalities(idx)
        attn, mlp = layer.attention, layer.mlp
        device, dtype = attn.linear_qkv.weight.device, model.compute_dtype
        (q0, q1), (k0, k1) = heads.q, heads.kv
        # Fused rows per modality: q heads, k groups, v groups, then one gate per q head.
        qkv_rows = [(q0 * d, q1 * d), ((hq + k0) * d, (hq + k1) * d), ((hq + hkv + k0) * d, (hq + hkv + k1) * d)]
        if attn.gated:
            gate0 = (hq + 2 * hkv) * d
            qkv_rows.append((gate0 + q0, gate0 + q1))
        with torch.device(device):
            attn.linear_qkv = ColumnParallelLinear(
                arch.hidden_size, attn.linear_qkv.out_features, qkv_rows, m, dtype
            )
            attn.linear_proj = RowParallelLinear(hq * d, (q0 * d, q1 * d), arch.hidden_size, m, dtype, tp)
        attn.num_heads_q, attn.num_heads_kv = q1 - q0, k1 - k0

        intermediate = arch.mlp_intermediate_size(idx)
        i0, i1 = even_range(intermediate, tp.world_size, tp.rank)
        rows_per_unit = mlp.up_gate_proj.out_features // intermediate  # 2 for swiglu7's interleaved pairs
        with torch.device(device):
            mlp.up_gate_proj = ColumnParallelLinear(
                arch.hidden_size, mlp.up_gate_proj.out_features, [(i0 * rows_per_unit, i1 * rows_per_unit)], m, dtype
            )
            mlp.down_proj = RowParallelLinear(intermediate, (i0, i1), arch.hidden_size, m, dtype, tp)
    model.tp = tp
    return model


@dataclass
class ShardLoadReport:
    """What one rank read: bytes of sharded tensors (its slices) and of replicated ones (in full)."""

    checkpoint_dir: str
    rank: int
    world_size: int
    sharded_bytes: int = 0
    replicated_bytes: int = 0
    loaded: int = 0
    files: list[str] = field(default_factory=list)

    @property
    def bytes_read(self) -> int:
        return self.sharded_bytes + self.replicated_bytes


def _shape(source: Any) -> list[int]:
    return list(source.get_shape()) if hasattr(source, "get_shape") else list(source.shape)


@torch.no_grad()
def fill_shard(model: MagiHumanDiT, tensors: Iterable[tuple[str, str, Any]], report: ShardLoadReport,
               strict: bool = True) -> None:
    """Copy (name, file, sliceable) tensors into a parallelized model, reading only this rank's part."""
    targets = dict(model.state_dict(keep_vars=True))
    modules = dict(model.named_modules())
    seen, unexpected = set(), []
    for name, file, source in tensors:
        target = targets.get(name)
        if target is None:
            unexpected.append(name)
            continue
        if file and file not in report.files:
            report.files.append(file)
        owner = modules.get(name.rpartition(".")[0])
        if isinstance(owner, ParallelLinear):
            full = owner.full_out_features if isinstance(owner, ColumnParallelLinear) else owner.full_in_features
            expected = (
                [full * owner.num_modalities, owner.in_features]
                if isinstance(owner, ColumnParallelLinear)
                else [owner.out_features * owner.num_modalities, full]
            )
            if _shape(source) != expected:
                raise CheckpointError(f"parameter {name!r} in {file} has shape {_shape(source)}, the architecture expects {expected}")
            value = owner.read_shard(source)
        else:
            if _shape(source) != list(target.shape):
                raise CheckpointError(
                    f"parameter {name!r} in {file} has shape {_shape(source)}, the architecture expects {list(target.shape)}"
                )
            value = source[:]
        if value.dtype != target.dtype:
            raise CheckpointError(f"parameter {name!r} in {file} has dtype {value.dtype}, expected {target.dtype}")
        nbytes = value.numel() * value.element_size()
        if isinstance(owner, ParallelLinear):
            report.sharded_bytes += nbytes
        else:
            report.replicated_bytes += nbytes
        target.copy_(value)
        seen.add(name)
    report.loaded = len(seen)
    missing = sorted(set(targets) - seen - OPTIONAL_KEYS)
    if missing:
        raise CheckpointError(f"checkpoint {report.checkpoint_dir} lacks {len(missing)} parameters of the model: {missing[:8]}")
    if unexpected:
        message = f"checkpoint {report.checkpoint_dir} holds {len(unexpected)} tensors the model does not have: {unexpected[:8]}"
        if strict:
            raise CheckpointError(message + "; check the arch, or pass strict=False to ignore them")
        log.warning(message)


def empty_shard(arch: ArchConfig, tp: TPGroup, device: str | torch.device, compute_dtype: torch.dtype) -> MagiHumanDiT:
    """This rank's parallelized DiT with uninitialized weights on `device`, in eval mode."""
    check_tp_size(arch, tp.world_size)
    with torch.device("meta"):
        model = parallelize_dit(MagiHumanDiT(arch, compute_dtype=compute_dtype), tp)
    model.to_empty(device=torch.device(device))
    model.adapter.rope.reset_bands()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def shard_dit(full: MagiHumanDiT, tp: TPGroup, device: str | torch.device | None = None) -> MagiHumanDiT:
    """This rank's shard of a DiT already in memory (random weights, or a model built elsewhere)."""
    model = empty_shard(full.arch, tp, device or full.device, full.compute_dtype)
    model.local_attention_backend = full.local_attention_backend
    report = ShardLoadReport(checkpoint_dir=getattr(getattr(full, "load_report", None), "checkpoint_dir", ""),
                             rank=tp.rank, world_size=tp.world_size)
    fill_shard(model, ((name, "", t) for name, t in full.state_dict().items()), report)
    model.load_report = report
    return model


@torch.no_grad()
def load_dit_shard(
    checkpoint_dir: str | Path | None,
    tp: TPGroup,
    arch: ArchConfig | str | dict | None = None,
    device: str | torch.device = "cpu",
    compute_dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    strict: bool = True,
    scratch_dir: str | Path | None = None,
) -> MagiHumanDiT:
    """This rank's shard of the DiT, filled from `checkpoint_dir` by sliced reads.

    With `checkpoint_dir` None the weights are the random ones `load_dit(None, seed=seed)` makes
    (built in full on each rank, then sliced: meant for tiny models and benchmarks). The model
    carries `load_report` (a ShardLoadReport) and `tp`.
    """
    arch = checkpoint_arch(checkpoint_dir, arch)
    if checkpoint_dir is None:
        full = MagiHumanDiT(arch, compute_dtype=compute_dtype)
        full.init_weights(seed)
        return shard_dit(full, tp, device)
    model = empty_shard(arch, tp, device, compute_dtype)
    report = ShardLoadReport(checkpoint_dir=str(checkpoint_dir), rank=tp.rank, world_size=tp.world_size)
    reader = CheckpointReader(checkpoint_dir, scratch_dir=scratch_dir)
    fill_shard(model, reader.iter_tensors(), report, strict=strict)
    model.load_report = report
    log.info("rank %d/%d read %.1f MB (%.1f MB sharded) from %s", tp.rank, tp.world_size,
             report.bytes_read / 1e6, report.sharded_bytes / 1e6, report.checkpoint_dir or "random init")
    return model


def init_process_group(tp_size: int, rank: int, init_method: str, backend: str | None = None,
                       timeout_s: float = 600.0) -> TPGroup:
    """Join the default process group (NCCL when CUDA is usable, else gloo) and return this rank's TPGroup."""
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=tp_size,
                            timeout=timedelta(seconds=timeout_s))
    return TPGroup(rank=rank, world_size=tp_size)
