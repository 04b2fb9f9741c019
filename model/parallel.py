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

Loading is sliced (`model.magihuman.load_dit(..., tp=...)` with `sliced_weights`): each rank reads
only its own rows / columns of every sharded tensor (safetensors `get_slice`), so a rank reads
about (sharded bytes) / N + (replicated bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .magihuman.config import ArchConfig
from .magihuman.dit import MagiHumanDiT, ModalityLinear, TokenLayout

Range = tuple[int, int]  # [start, stop) along one dim of a full tensor


@dataclass(frozen=True)
class TPGroup:
    """Where this process sits in its tensor-parallel group. `group` None is the default process group;
    `cpu_group` carries Python objects (embeddings, decoded pieces) and is `group` when None (gloo)."""

    rank: int = 0
    world_size: int = 1
    group: Any = None
    cpu_group: Any = None

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

    @property
    def full_weight_shape(self) -> list[int]:
        return [self.full_out_features * self.num_modalities, self.in_features]

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

    @property
    def full_weight_shape(self) -> list[int]:
        return [self.out_features * self.num_modalities, self.full_in_features]

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
    ones, without values); `model.magihuman.load_dit(..., tp=tp)` builds and fills it.
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


def sliced_weights(model: MagiHumanDiT) -> dict[str, ColumnParallelLinear | RowParallelLinear]:
    """The plan as the loader reads it: each weight this rank holds a slice of, by parameter name,
    with the layer that knows the full tensor's shape and reads its slice. Empty at TP=1."""
    return {f"{name}.weight": module for name, module in model.named_modules() if isinstance(module, ParallelLinear)}


def init_process_group(tp_size: int, rank: int, init_method: str, backend: str | None = None,
                       timeout_s: float = 600.0) -> TPGroup:
    """Join the default process group (NCCL when CUDA is usable, else gloo) and return this rank's TPGroup.
    Under NCCL a gloo group of the same ranks carries the CPU-side objects."""
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=tp_size,
                            timeout=timedelta(seconds=timeout_s))
    cpu_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s)) if backend == "nccl" else None
    return TPGroup(rank=rank, world_size=tp_size, cpu_group=cpu_group)


# --------------------------------------------------------------------------------------------
# The replica's other work: what rank 0 computes alone, and the decode split across ranks
# --------------------------------------------------------------------------------------------

# The rank that decodes the clip's audio while the others decode video; rank 0 gathers and assembles.
def audio_rank(tp: TPGroup) -> int:
    return tp.world_size - 1


def broadcast_from_rank0(value: Any, tp: TPGroup) -> Any:
    """Rank 0's `value` on every rank (tensors inside must be on the CPU); others pass None."""
    if tp.world_size == 1:
        return value
    box = [value if tp.rank == 0 else None]
    dist.broadcast_object_list(box, group=tp.cpu_group or tp.group, group_src=0)
    return box[0]


def gather_to_rank0(value: Any, tp: TPGroup) -> list[Any] | None:
    """Every rank's `value` (CPU tensors inside), in rank order, on rank 0; None on the others."""
    if tp.world_size == 1:
        return [value]
    out = [None] * tp.world_size if tp.rank == 0 else None
    dist.gather_object(value, out, group=tp.cpu_group or tp.group, group_dst=0)
    return out


def split_decode(decoder: Any, latents: torch.Tensor, tp: TPGroup | None) -> torch.Tensor | None:
    """`decoder.decode(latents)` computed by all ranks of `tp`: the decoder's independent work items
    (TurboVAED: a clip's temporal windows; the Wan2.2 VAE: its spatial tiles, or whole clips below
    the tiling size) are cut into contiguous runs, one per rank, and rank 0 assembles the gathered
    pieces into what one rank would have decoded. Rank 0 gets the frames, the others None."""
    if tp is None or tp.world_size == 1:
        return decoder.decode(latents)
    items = decoder.work_items(latents)
    start, stop = even_range(len(items), tp.world_size, tp.rank)
    mine = dict(zip(items[start:stop], decoder.decode_items(latents, items[start:stop])))
    gathered = gather_to_rank0(mine, tp)
    if gathered is None:
        return None
    return decoder.assemble(latents, {item: piece for part in gathered for item, piece in part.items()})
