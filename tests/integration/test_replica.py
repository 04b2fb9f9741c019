"""TP replicas on a real local Ray: lockstep results equal TP=1, batches of mixed shapes, and rank failures.

Rank actors ask for 0.25 CPU so a TP=2 group fits the 2-CPU test instance beside other work.
"""

from __future__ import annotations

import threading
import time

import pytest
import ray
import torch

from model.parallel import TPGroup
from model.placement import ReplicaShape
from model.replica import ReplicaConfig, ReplicaError, TPReplica
from tests.integration.rank_models import DenoiseRequest, DiTModel, FailedRequest, ReplicaPool, kill_held_rank

TEXT_CHANNELS = 96
MODEL = DiTModel(arch="tiny", compute_dtype="float32", seed=3)
CONFIG = ReplicaConfig(shape=ReplicaShape(tp_size=2, cpus_per_rank=0.25), start_timeout_s=120, call_timeout_s=120,
                       collective_timeout_s=60)
BOUND = 1e-4  # relative L2 of an fp32 distilled denoise, TP vs TP=1 (see test_tp_equivalence.py)


def request(seed: int, frames=2, height=4, width=4, audio=5, text_len=7) -> DenoiseRequest:
    g = torch.Generator().manual_seed(1000 + seed)
    return DenoiseRequest(torch.randn(text_len, TEXT_CHANNELS, generator=g), frames, height, width, audio, seed)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def assert_matches_tp1(requests, results, model=MODEL) -> None:
    """Each result equals what one process (TP=1) of ``model`` makes of its request."""
    reference = model.build(TPGroup(0, 1), torch.device("cpu")).generate(requests)
    assert len(results) == len(requests)
    for (video, audio), (ref_video, ref_audio) in zip(results, reference):
        assert video.shape == ref_video.shape and audio.shape == ref_audio.shape
        assert rel_err(video, ref_video) < BOUND and rel_err(audio, ref_audio) < BOUND


@pytest.fixture(scope="module")
def replica(ray_session):
    replica = TPReplica(MODEL, CONFIG)
    yield replica
    replica.shutdown()


def test_tp2_replica_equals_tp1_and_packs_clips_into_batches(replica):
    # Two clips of one shape (one batch, prompts of different lengths) and one of another shape.
    requests = [request(0), request(1, text_len=4), request(2, frames=3, audio=9)]
    results = replica.generate(requests)
    assert_matches_tp1(requests, results)
    assert [info["rank"] for info in replica.rank_info] == [0, 1]
    assert len(set(replica.node_ids())) == 1
    # Each rank read half of the sharded weights plus the replicated ones: well under the whole model.
    full_bytes = sum(t.numel() * t.element_size() for t in MODEL.build(TPGroup(0, 1), torch.device("cpu")).dit.state_dict().values())
    assert all(info["bytes_read"] < 0.6 * full_bytes for info in replica.rank_info)


def test_a_bad_request_fails_on_every_rank_alike_and_keeps_the_group(replica):
    bad = DenoiseRequest(torch.randn(5, TEXT_CHANNELS), 2, 3, 4, 5)  # odd latent height
    ranks_before = list(replica.ranks)
    with pytest.raises(ValueError, match="H and W must be even"):
        replica.generate([bad])
    assert replica.ranks == ranks_before
    assert_matches_tp1([request(4)], replica.generate([request(4)]))


def held_model(tmp_path) -> DiTModel:
    """MODEL whose rank 1 holds the first call to reach it until the test kills that rank (rank_models.py)."""
    return DiTModel(arch="tiny", compute_dtype="float32", seed=3, hold_dir=str(tmp_path))


def test_killing_a_rank_mid_call_rebuilds_the_group_and_retries(ray_session, tmp_path):
    model = held_model(tmp_path)
    replica = TPReplica(model, CONFIG)
    try:
        requests = [request(10), request(11)]
        old_ranks = list(replica.ranks)
        killer = threading.Thread(target=kill_held_rank, args=([replica], tmp_path))
        killer.start()
        results = replica.generate(requests)  # held open on rank 1 until the kill lands
        killer.join()
        assert replica.restarts == 1 and not set(replica.ranks) & set(old_ranks)
        assert_matches_tp1(requests, results, model)
    finally:
        replica.shutdown()


@pytest.mark.parametrize("max_retries", [1, 0])
def test_pool_ends_every_request_done_or_failed_with_a_reason(ray_session, tmp_path, max_retries):
    """A rank of one replica is killed mid-batch: with a retry the batch is rerun on another replica
    (or on the rebuilt one), without one its requests come back as FailedRequest naming the dead rank."""
    model = held_model(tmp_path)
    pool = ReplicaPool(model, CONFIG, num_replicas=2, max_retries=max_retries)
    try:
        requests = [request(20 + i) for i in range(4)]
        killed = []
        killer = threading.Thread(target=lambda: killed.append(kill_held_rank(pool.replicas, tmp_path)))
        killer.start()
        results = pool.generate(requests, batches=[[0, 1], [2, 3]])
        killer.join()
        assert len(killed) == 1
        failed = [i for i, r in enumerate(results) if isinstance(r, FailedRequest)]
        if max_retries:
            assert failed == [] and pool.retried_batches == 1
        else:
            assert failed in ([0, 1], [2, 3])
            assert all("rank 1 died" in results[i].reason and results[i].request is requests[i] for i in failed)
        done = [i for i in range(len(requests)) if i not in failed]
        assert_matches_tp1([requests[i] for i in done], [results[i] for i in done], model)
    finally:
        pool.shutdown()


def test_a_group_no_node_can_hold_is_refused_at_once(ray_session):
    started = time.monotonic()
    with pytest.raises(ReplicaError, match=r"no node of this Ray cluster has \{'CPU': 4.0\}"):
        TPReplica(MODEL, ReplicaConfig(shape=ReplicaShape(tp_size=4, cpus_per_rank=1.0)))
    assert time.monotonic() - started < 10


def test_bundles_per_rank_and_owner_bundle_layout():
    assert ReplicaShape(tp_size=2, use_gpu=True).rank_bundles() == [{"CPU": 1.0, "GPU": 1}, {"CPU": 1.0, "GPU": 1}]
    assert ReplicaShape(tp_size=3, cpus_per_rank=0.5).rank_bundles() == [{"CPU": 0.5}] * 3
    assert ReplicaShape(tp_size=2, cpus_per_rank=0.5, owner_cpus=0.25).group_bundles() == [{"CPU": 0.25}] + [{"CPU": 0.5}] * 2
    assert ReplicaShape(tp_size=2, owner_cpus=0).group_bundles() == [{"CPU": 1.0}] * 2


def test_one_shape_gives_ray_data_and_serve_the_same_placement(ray_session):
    """The actor a Ray Data call or a Serve replica runs in asks for the same resources, and
    Ray Data's per-actor placement group has the bundles Serve is given; the pool's groups go
    when the block ends."""
    gpu_tp4 = ReplicaShape.for_device(4, "cuda")
    serve = gpu_tp4.serve_options()
    assert serve["placement_group_strategy"] == "STRICT_PACK"
    assert serve["placement_group_bundles"] == [{"CPU": 1.0}] + [{"CPU": 1.0, "GPU": 1}] * 4
    with gpu_tp4.data_pool_args(2) as data:
        assert data["num_cpus"] == serve["ray_actor_options"]["num_cpus"] == 1.0
        assert data["num_gpus"] == serve["ray_actor_options"]["num_gpus"] == 0
        assert data["compute"].min_size == data["compute"].max_size == 2
    with ReplicaShape.for_device(2, "cpu").data_pool_args(1) as data:
        pg = data["ray_remote_args_fn"]()["scheduling_strategy"].placement_group
        assert pg.bundle_specs == [{"CPU": 0.5}] * 3
        assert pg.wait(30)
    assert ray.util.placement_group_table(pg)["state"] == "REMOVED"
    for device in ("cpu", "cuda"):
        in_process = ReplicaShape.for_device(1, device)
        with in_process.data_pool_args(1) as data:
            assert "ray_remote_args_fn" not in data and "placement_group_bundles" not in in_process.serve_options()
            assert {k: data[k] for k in ("num_cpus", "num_gpus") if k in data} == in_process.serve_options()["ray_actor_options"]
