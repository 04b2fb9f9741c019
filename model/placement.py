"""The shape of one model replica and how Ray places it: the one placement policy.

A replica is `tp_size` ranks. At tp_size 1 the actor that runs a Ray Data or Serve call holds
the model itself and asks for the device. Above, that actor only owns the replica: it asks for no
GPU and sits in bundle 0 of a STRICT_PACK placement group (the owner bundle), and the replica
(model/replica.py) starts one rank actor in each of the other bundles, so a TP group never
spans nodes. This is the layout of Ray's own batch LLM stage (`ray_remote_args_fn` making a
placement group per actor) and of Serve's `placement_group_bundles` (the replica actor in bundle 0).

`ReplicaShape` gives both forms: `data_pool_args` (Ray Data `map_batches` arguments) and
`serve_options` (Serve deployment options); `rank_bundles` / `rank_actor_options` are what the
replica itself asks for. `check_cluster_fit` checks, before any replica starts, that a rank fits
the cluster's GPUs (their size read on the GPU nodes themselves).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict, Field
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

logger = logging.getLogger(__name__)

STRATEGY = "STRICT_PACK"  # every rank of a TP group on one node (NVLink / shared memory between ranks)


class ReplicaShape(BaseModel):
    """What one replica asks of the cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tp_size: int = Field(1, ge=1, description="tensor-parallel ranks")
    use_gpu: bool = Field(False, description="one GPU per rank (NCCL); else CPU ranks over gloo")
    cpus_per_rank: float = Field(1.0, gt=0)
    owner_cpus: float = Field(1.0, ge=0, description="the actor owning a TP group (bundle 0); 0: no owner bundle")

    @classmethod
    def for_device(cls, tp_size: int, device: str) -> "ReplicaShape":
        """GPU ranks each hold a GPU and a core; CPU ranks (gloo, for trying TP by hand or in
        tests) share the machine's cores, so ranks and owner ask for half a core each."""
        gpu = device.startswith("cuda")
        cpus = 1.0 if gpu else 0.5
        return cls(tp_size=tp_size, use_gpu=gpu, cpus_per_rank=cpus, owner_cpus=cpus)

    @property
    def in_process(self) -> bool:
        """The calling actor holds the model itself (no rank actors)."""
        return self.tp_size == 1

    def rank_bundles(self) -> list[dict[str, float]]:
        """One bundle per rank: {"CPU": c, "GPU": 1} on GPUs, {"CPU": c} on CPUs."""
        bundle = {"CPU": self.cpus_per_rank, "GPU": 1} if self.use_gpu else {"CPU": self.cpus_per_rank}
        return [dict(bundle) for _ in range(self.tp_size)]

    def group_bundles(self) -> list[dict[str, float]]:
        """The owner bundle (when owner_cpus > 0), then the rank bundles."""
        owner = [{"CPU": self.owner_cpus}] if self.owner_cpus > 0 else []
        return owner + self.rank_bundles()

    def rank_actor_options(self) -> dict[str, float]:
        return {"num_cpus": self.cpus_per_rank, "num_gpus": 1 if self.use_gpu else 0}

    def actor_options(self) -> dict[str, float]:
        """Resources of the actor a Ray Data or Serve call runs in: the device at tp_size 1, else
        only the owner bundle's CPUs (its ranks hold the GPUs)."""
        if self.in_process:
            return {"num_cpus": 1, "num_gpus": 1} if self.use_gpu else {"num_cpus": 1}
        return {"num_cpus": self.owner_cpus, "num_gpus": 0}

    def remote_args_fn(self) -> Callable[[], dict[str, Any]]:
        """`ray_remote_args_fn` for a Ray Data actor pool whose actors each own one TP replica: every
        call makes a fresh placement group and schedules the actor in bundle 0 with child capture,
        so the ranks it starts land in the same group. With owner_cpus 0 there is no owner bundle
        and the actor (asking for nothing) may sit in any bundle."""

        def remote_args() -> dict[str, Any]:
            pg = placement_group(self.group_bundles(), strategy=STRATEGY)
            return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
                pg, placement_group_bundle_index=0 if self.owner_cpus > 0 else -1,
                placement_group_capture_child_tasks=True)}

        return remote_args

    @contextmanager
    def data_pool_args(self, replicas: int, **strategy_options: Any) -> Iterator[dict[str, Any]]:
        """`map_batches` arguments of an actor pool of `replicas` actors, one replica each;
        `strategy_options` go to `ActorPoolStrategy`. Ray keeps a driver's placement groups until
        the driver exits, so the ones made for the pool are removed when the block ends."""
        pool = ray.data.ActorPoolStrategy(size=replicas, **strategy_options)
        if self.in_process:
            yield {"compute": pool, **self.actor_options()}
            return
        make_remote_args = self.remote_args_fn()
        groups = []

        def remote_args() -> dict[str, Any]:
            args = make_remote_args()
            groups.append(args["scheduling_strategy"].placement_group)
            return args

        try:
            yield {"compute": pool, **self.actor_options(), "ray_remote_args_fn": remote_args}
        finally:
            for group in groups:
                remove_placement_group(group)

    def serve_options(self) -> dict[str, Any]:
        """Serve deployment options placing one replica per Serve replica: the replica actor in
        bundle 0, the ranks (which take the last tp_size bundles) in the rest."""
        options: dict[str, Any] = {"ray_actor_options": self.actor_options()}
        if not self.in_process:
            options["placement_group_bundles"] = self.group_bundles()
            options["placement_group_strategy"] = STRATEGY
        return options


# How long the fit check waits for a GPU to read the size of: a cluster whose GPUs are all busy,
# or whose autoscaler has not added a GPU node yet, is not checked (the job still starts).
GPU_PROBE_TIMEOUT_S = 60.0


def _device_memory() -> int:
    import torch

    return torch.cuda.get_device_properties(0).total_memory


def cluster_gpu_bytes(timeout_s: float = GPU_PROBE_TIMEOUT_S) -> int | None:
    """The memory of the smallest GPU among the Ray cluster's GPU nodes: one one-GPU task pinned to
    each node that has GPUs reads its card (the driver itself may have none). None when the
    cluster has no GPU node, or none answered within ``timeout_s``."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_gpus=1, num_cpus=0, max_retries=0)(_device_memory)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote()
            for node in ray.nodes() if node.get("Alive") and node.get("Resources", {}).get("GPU", 0) > 0]
    done, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
    for ref in pending:
        ray.cancel(ref, force=True)
    sizes = []
    for ref in done:
        try:
            sizes.append(ray.get(ref))
        except Exception:  # noqa: BLE001 - a node whose GPU cannot be read is left out of the check
            continue
    return min(sizes) if sizes else None


def check_cluster_fit(config, tp_size: int, resolutions, durations=(15,), gpu_bytes: int | None = None) -> None:
    """Raise ValueError in one line (model.memory.check_replica_fits: it names the smallest TP that
    fits) when a rank of a ``tp_size`` replica of ``config`` (a GeneratorConfig on CUDA) would not
    fit ``gpu_bytes``, by default the cluster's GPUs (:func:`cluster_gpu_bytes`). The campaign job
    and the Serve application both check here before any replica starts. A CPU replica, or a
    cluster whose GPUs cannot be read now, is not checked."""
    from model.memory import check_replica_fits

    if not config.device.startswith("cuda"):
        return
    if gpu_bytes is None:
        gpu_bytes = cluster_gpu_bytes()
        if gpu_bytes is None:
            logger.warning("no GPU of the cluster could be read (no GPU node yet, or all busy for %g s): the "
                           "replica's memory fit is not checked", GPU_PROBE_TIMEOUT_S)
            return
    check_replica_fits(config, tp_size, gpu_bytes, resolutions, durations)
