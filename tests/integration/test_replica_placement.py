"""Placement of TP replicas on a fake two-node cluster with 4 GPUs per node (ray.cluster_utils.Cluster).

The GPUs are fake: Ray schedules by them, the ranks find no CUDA and run on the CPU over gloo.
The cluster runs in a child process (this file run as a script), which reports what it saw as
JSON; the test process asserts on it. So the test never touches the shared session Ray instance
of tests/conftest.py and runs in any order with the other modules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # ~60-80 s on 2 busy cores: a 3-node cluster and 12 rank processes
ROOT = Path(__file__).resolve().parents[2]


def run_cluster_scenarios() -> dict:
    """Both scenarios on one Cluster; returns what the assertions need."""
    import ray
    import torch
    from ray.cluster_utils import Cluster
    from ray.util import placement_group_table

    from model.parallel import TPGroup
    from tests.integration.rank_models import DenoiseRequest, DiTModel, ReplicaPool

    from model.placement import ReplicaShape
    from model.replica import ReplicaConfig, TPReplica

    model = DiTModel(arch="tiny", compute_dtype="float32", seed=3, steps=2)
    shape = ReplicaShape(tp_size=4, use_gpu=True, cpus_per_rank=0.25, owner_cpus=0.25)
    config = ReplicaConfig(shape=shape, start_timeout_s=180, call_timeout_s=120)
    g = torch.Generator().manual_seed(0)
    requests = [DenoiseRequest(torch.randn(5, 96, generator=g), 2, 4, 4, 5, seed=i) for i in range(2)]
    reference = model.build(TPGroup(0, 1), torch.device("cpu")).generate(requests)

    def max_rel_err(results) -> float:
        return max(((a - b).norm() / b.norm()).item() for r, ref in zip(results, reference) for a, b in zip(r, ref))

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    gpu_nodes = [cluster.add_node(num_cpus=2, num_gpus=4).node_id for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}})
    report: dict = {"gpu_nodes": gpu_nodes}
    try:
        # 1. A pool of two TP=4 replicas, each in its own placement group made by the replica.
        pool = ReplicaPool(model, config, num_replicas=2)
        report["pool_rank_nodes"] = [replica.node_ids() for replica in pool.replicas]
        report["pool_rank_devices"] = [info["device"] for replica in pool.replicas for info in replica.rank_info]
        report["pool_max_rel_err"] = max_rel_err(pool.generate(requests, batches=[[0], [1]]))
        pool.shutdown()

        # 2. What a Ray Data actor pool does with the shape's `ray_remote_args_fn`: the owner actor sits in
        # bundle 0 of a fresh STRICT_PACK group, asks for no GPU, and the ranks it starts take the GPU bundles.
        remote_args = shape.remote_args_fn()()
        pg = remote_args["scheduling_strategy"].placement_group
        owner = ray.remote(TPReplica).options(**shape.actor_options(), **remote_args).remote(model, config)
        report["owner_rank_nodes"] = ray.get(owner.node_ids.remote(), timeout=180)
        table = placement_group_table(pg)
        report["owner_bundle_nodes"] = sorted(set(table["bundles_to_node_id"].values()))
        report["owner_bundles"] = list(table["bundles"].values())
        report["owner_max_rel_err"] = max_rel_err(ray.get(owner.generate.remote(requests), timeout=120))
        ray.get(owner.shutdown.remote())
    finally:
        ray.shutdown()
        cluster.shutdown()
    return report


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("placement") / "report.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ""}
    proc = subprocess.run([sys.executable, __file__, str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_pool_of_two_tp4_replicas_packs_each_on_one_node_and_spreads_them(report):
    placements = [set(nodes) for nodes in report["pool_rank_nodes"]]
    assert [len(nodes) for nodes in report["pool_rank_nodes"]] == [4, 4]
    assert all(len(nodes) == 1 for nodes in placements)  # each TP group on one node
    assert placements[0] | placements[1] == set(report["gpu_nodes"])  # the two groups on the two GPU nodes
    assert set(report["pool_rank_devices"]) == {"cpu"}  # fake GPUs: the ranks compute on the CPU
    assert report["pool_max_rel_err"] < 1e-4  # and compute what TP=1 computes


def test_an_owner_actor_placed_by_the_shapes_remote_args_fn_puts_its_ranks_in_its_own_group(report):
    assert len(report["owner_bundle_nodes"]) == 1
    assert set(report["owner_rank_nodes"]) == set(report["owner_bundle_nodes"])
    assert report["owner_bundles"][0] == {"CPU": 0.25}
    assert all(bundle == {"CPU": 0.25, "GPU": 1.0} for bundle in report["owner_bundles"][1:])
    assert report["owner_max_rel_err"] < 1e-4


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(run_cluster_scenarios()))
