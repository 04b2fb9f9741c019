"""Sharding plan and sliced loading of the DiT (no process group needed: loading is per rank)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from model.magihuman import PRESETS, CheckpointError, load_dit, save_checkpoint
from model.parallel import TPGroup, check_tp_size, even_range, head_shard

DATA = Path(__file__).resolve().parents[1] / "data" / "magihuman-tiny"
TINY = PRESETS["tiny"]


def test_even_range_covers_everything_once():
    for total, world in [(340, 4), (13652, 8), (7, 3)]:
        ranges = [even_range(total, world, r) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == total
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1


@pytest.mark.parametrize("preset, ok, bad", [("tiny", [1, 2, 4], [3, 8]), ("magihuman-base", [1, 2, 4, 8], [3, 5, 16])])
def test_tp_sizes_the_heads_allow(preset, ok, bad):
    for n in ok:
        check_tp_size(PRESETS[preset], n)
    for n in bad:
        with pytest.raises(ValueError, match=f"tp_size={n}"):
            check_tp_size(PRESETS[preset], n)


def test_15b_heads_at_tp8_give_five_query_heads_and_one_kv_group_per_rank():
    shards = [head_shard(PRESETS["magihuman-base"], TPGroup(r, 8)) for r in range(8)]
    assert [s.q for s in shards] == [(5 * r, 5 * r + 5) for r in range(8)]
    assert [s.kv for s in shards] == [(r, r + 1) for r in range(8)]


def test_tp1_shard_is_the_whole_model(tiny_checkpoint_dir):
    full = load_dit(tiny_checkpoint_dir)
    shard = load_dit(tiny_checkpoint_dir, tp=TPGroup(0, 1))
    full_state, shard_state = full.state_dict(), shard.state_dict()
    assert full_state.keys() == shard_state.keys()
    assert all(torch.equal(full_state[k], shard_state[k]) for k in full_state)


@pytest.mark.parametrize("tp_size", [2, 4])
def test_shards_put_back_together_are_the_checkpoint(tiny_checkpoint_dir, tp_size):
    """Concatenating every rank's q / k / v / gate rows and MLP / projection slices rebuilds each tensor."""
    full = load_dit(tiny_checkpoint_dir).state_dict()
    shards = [load_dit(tiny_checkpoint_dir, tp=TPGroup(r, tp_size)).state_dict() for r in range(tp_size)]
    hq, hkv, d = TINY.num_heads_q, TINY.num_heads_kv, TINY.head_dim
    kv_owners = sorted({head_shard(TINY, TPGroup(r, tp_size)).kv for r in range(tp_size)})
    first_rank_of = {kv: next(r for r in range(tp_size) if head_shard(TINY, TPGroup(r, tp_size)).kv == kv) for kv in kv_owners}
    for idx in range(TINY.num_layers):
        m = TINY.num_modalities(idx)
        prefix = f"block.layers.{idx}"
        for name, dim in [("mlp.up_gate_proj", 0), ("mlp.down_proj", 1), ("attention.linear_proj", 1)]:
            key = f"{prefix}.{name}.weight"
            per_modality = [s[key].chunk(m, dim=0) for s in shards]
            rebuilt = torch.cat([torch.cat([p[j] for p in per_modality], dim=dim) for j in range(m)], dim=0)
            assert torch.equal(rebuilt, full[key]), key
        key = f"{prefix}.attention.linear_qkv.weight"
        for j, full_block in enumerate(full[key].chunk(m)):
            q, k, v, gate = full_block.split([hq * d, hkv * d, hkv * d, hq])
            parts = [s[key].chunk(m)[j] for s in shards]
            hq_r = hq // tp_size
            hkv_r = max(hkv // tp_size, 1)
            split = [hq_r * d, hkv_r * d, hkv_r * d, hq_r]
            assert torch.equal(torch.cat([p.split(split)[0] for p in parts]), q)
            assert torch.equal(torch.cat([p.split(split)[3] for p in parts]), gate)
            assert torch.equal(torch.cat([parts[first_rank_of[kv]].split(split)[1] for kv in kv_owners]), k)
            assert torch.equal(torch.cat([parts[first_rank_of[kv]].split(split)[2] for kv in kv_owners]), v)


def checkpoint_bytes(tiny_checkpoint_dir: Path) -> dict[str, int]:
    with safe_open(str(tiny_checkpoint_dir / "model.safetensors"), framework="pt") as f:
        return {k: f.get_slice(k)[:].numel() * f.get_slice(k)[:].element_size() for k in f.keys()}


@pytest.mark.parametrize("tp_size", [2, 4])
def test_each_rank_reads_one_nth_of_the_sharded_part_plus_the_replicated_part(tiny_checkpoint_dir, tp_size):
    sizes = checkpoint_bytes(tiny_checkpoint_dir)
    sharded_names = {n for n in sizes if n.rsplit(".", 2)[-2] in ("linear_qkv", "linear_proj", "up_gate_proj", "down_proj")}
    sharded = sum(sizes[n] for n in sharded_names)
    replicated = sum(sizes.values()) - sharded
    # k and v rows: 2 kv groups, so at TP=4 each rank holds a whole group (1/2, not 1/4, of them).
    kv_rows = 2 * TINY.num_heads_kv * TINY.head_dim
    qkv_rows = (TINY.num_heads_q + 2 * TINY.num_heads_kv) * TINY.head_dim + TINY.num_heads_q
    kv = sum(sizes[n] * kv_rows // qkv_rows for n in sharded_names if "linear_qkv" in n)
    kv_extra = kv // min(tp_size, TINY.num_heads_kv) - kv // tp_size
    reports = [load_dit(tiny_checkpoint_dir, tp=TPGroup(r, tp_size)).load_report for r in range(tp_size)]
    for rank, report in enumerate(reports):
        assert report.replicated_bytes == replicated
        assert report.sharded_bytes == sharded // tp_size + kv_extra, f"rank {rank}"
    if tp_size == 2:  # no replication of kv groups: the ranks together read the checkpoint exactly once
        assert sum(r.bytes_read for r in reports) == sum(sizes.values()) + replicated
    print(f"TP={tp_size}: checkpoint {sum(sizes.values())} B, per rank {reports[0].bytes_read} B "
          f"(sharded {sharded} B / {tp_size} + kv replication {kv_extra} B + replicated {replicated} B)")


def test_sliced_loading_reads_index_shards_and_zst(tiny_checkpoint_dir, tmp_path):
    full = load_dit(tiny_checkpoint_dir)
    save_checkpoint(full.state_dict(), tmp_path, arch=TINY, max_shard_bytes=1_000_000, compress=True)
    a = load_dit(tiny_checkpoint_dir, tp=TPGroup(1, 2)).state_dict()
    report = (b := load_dit(tmp_path, tp=TPGroup(1, 2))).load_report
    assert len(report.files) > 1
    assert all(torch.equal(a[k], v) for k, v in b.state_dict().items())


def test_random_weights_shard_like_the_full_random_model():
    full = load_dit(None, arch="tiny", seed=11).state_dict()
    shard = load_dit(None, tp=TPGroup(0, 2), arch="tiny", seed=11).state_dict()
    key = "block.layers.3.mlp.down_proj.weight"
    torch.testing.assert_close(shard[key], full[key][:, : full[key].shape[1] // 2], rtol=0, atol=0)
    assert torch.equal(shard["final_linear_video.weight"], full["final_linear_video.weight"])


def test_checkpoint_of_another_architecture_is_named(tiny_checkpoint_dir):
    with pytest.raises(CheckpointError, match="linear_qkv.weight.*shape"):
        load_dit(tiny_checkpoint_dir, tp=TPGroup(0, 2), arch=TINY.replace(num_query_groups=4))
    with pytest.raises(ValueError, match="tp_size=3"):
        load_dit(tiny_checkpoint_dir, tp=TPGroup(0, 3))
