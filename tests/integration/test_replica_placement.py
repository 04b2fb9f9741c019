"""Placement of TP replicas on a fake two-node cluster with 4 GPUs per node (ray.cluster_utils.Cluster).

The GPUs are fake: Ray schedules by them, the ranks find no CUDA and run on the CPU over gloo.
This module needs its own Ray: it shuts down the shared session instance first and starts it again
(as tests/conftest.py does) when it is done, so it runs in any order with the other modules.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch
from ray.cluster_utils import Cluster
from ray.util import placement_group_table

from model.parallel import TPGroup
from model.replica import DenoiseRequest, DiTModel, ReplicaConfig, ReplicaPool, TPReplica, replica_remote_args_fn

ROOT = Path(__file__).resolve().parents[2]
MODEL = DiTModel(arch="tiny", compute_dtype="float32", seed=3, steps=2)
CONFIG = ReplicaConfig(tp_size=4, use_gpu=True, cpus_per_rank=0.25, start_timeout_s=180, call_timeout_s=120)


@pytest.fixture(scope="module")
def gpu_cluster():
    restart_session = ray.is_initialized()
    if restart_session:
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=2, num_gpus=4) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}})
    yield cluster, [node.node_id for node in nodes]
    ray.shutdown()
    cluster.shutdown()
    if restart_session:  # the shared session fixture's instance, as tests/conftest.py starts it
        from pipeline.run import ensure_ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        ensure_ray()


def requests() -> list[DenoiseRequest]:
    g = torch.Generator().manual_seed(0)
    return [DenoiseRequest(torch.randn(5, 96, generator=g), 2, 4, 4, 5, seed=i) for i in range(2)]


def test_pool_of_two_tp4_replicas_packs_each_on_one_node_and_spreads_them(gpu_cluster):
    _, gpu_nodes = gpu_cluster
    pool = ReplicaPool(MODEL, CONFIG, num_replicas=2)
    try:
        placements = [set(replica.node_ids()) for replica in pool.replicas]
        assert all(len(nodes) == 1 for nodes in placements)  # each TP group on one node
        assert placements[0] | placements[1] == set(gpu_nodes)  # the two groups on different GPU nodes
        assert all(info["device"] == "cpu" for replica in pool.replicas for info in replica.rank_info)
        results = pool.generate(requests(), batches=[[0], [1]])
        reference = MODEL.build(TPGroup(0, 1), torch.device("cpu")).generate(requests())
        for (video, audio), (ref_video, ref_audio) in zip(results, reference):
            torch.testing.assert_close(video, ref_video, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(audio, ref_audio, rtol=1e-4, atol=1e-4)
    finally:
        pool.shutdown()


def test_an_owner_actor_placed_by_replica_remote_args_fn_puts_its_ranks_in_its_own_group(gpu_cluster):
    """What a Ray Data actor pool does with `ray_remote_args_fn`: the actor sits in bundle 0 of a fresh
    STRICT_PACK group, asks for no GPU, and the TP ranks it starts take the group's GPU bundles."""
    remote_args = replica_remote_args_fn(4, use_gpu=True, cpus_per_rank=0.25, owner_cpus=0.25)()
    pg = remote_args["scheduling_strategy"].placement_group
    owner = ray.remote(TPReplica).options(num_cpus=0.25, num_gpus=0, **remote_args).remote(MODEL, CONFIG)
    try:
        rank_nodes = ray.get(owner.node_ids.remote(), timeout=180)
        bundle_nodes = set(placement_group_table(pg)["bundles_to_node_id"].values())
        assert len(bundle_nodes) == 1 and set(rank_nodes) == bundle_nodes
        assert placement_group_table(pg)["bundles"][0] == {"CPU": 0.25}
        assert len(ray.get(owner.generate.remote(requests()[:1]), timeout=120)) == 1
        ray.get(owner.shutdown.remote())
    finally:
        ray.kill(owner)
        ray.util.remove_placement_group(pg)
