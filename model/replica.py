"""A model replica = one tensor-parallel group of rank actors placed together by Ray.

A replica owns a placement group of `tp_size` bundles packed on one node (STRICT_PACK), starts one
rank actor per bundle, joins them in a torch.distributed group (NCCL on GPUs, gloo on CPUs), and
has every rank build the same model with its own shard of the DiT. `TPReplica.generate(requests)`
sends the same requests to every rank; the ranks run the same denoise loop in lockstep (the
all-reduces inside the DiT keep them together) and rank 0's result is returned. It presents the
interface of `AVGenerator` (`generate(list[ClipSpec]) -> list[ClipOutput]`), so the batch
pipeline's generate stage and the Serve app take either.

Where the placement group comes from:
- inside a Ray Data actor pool (or a Serve replica) the owner actor already runs in a placement
  group that `ReplicaShape` (model/placement.py) asked for; the ranks take its last `tp_size` bundles;
- otherwise (a driver, the CLI) the replica makes its own.

Failure: a rank that dies (RayActorError) or stops answering takes the whole group down (its peers
are stuck in a collective). The replica kills the survivors, starts a fresh group in the same
placement group and retries the requests in flight, `max_retries` times; then it raises
ReplicaError. An exception raised by the model code on every rank alike (a bad request) is
re-raised as is, and the group is kept.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Sequence, TypeVar

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from pydantic import BaseModel, ConfigDict, Field
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from .parallel import TPGroup, init_process_group
from .placement import STRATEGY, ReplicaShape

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Result = TypeVar("Result")


class ReplicaError(RuntimeError):
    """A replica could not finish a call (a rank died or hung, and retries ran out); names the cause."""


class RankRunner(Protocol[Request, Result]):
    def generate(self, requests: list[Request]) -> list[Result]: ...


class RankModel(Protocol):
    """A picklable recipe each rank turns into its runner (its shard of the model)."""

    def build(self, tp: TPGroup, device: torch.device) -> RankRunner: ...


class ReplicaConfig(BaseModel):
    """One replica: its shape (model/placement.py) and how long and how often to try."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shape: ReplicaShape = ReplicaShape()
    max_retries: int = Field(1, ge=0, description="fresh groups tried after a rank failure, per call")
    start_timeout_s: float = Field(600.0, gt=0, description="placement and model loading")
    call_timeout_s: float = Field(3600.0, gt=0, description="one generate call; a rank silent this long is taken as hung")
    collective_timeout_s: float = Field(600.0, gt=0, description="torch.distributed timeout of a collective")


# --------------------------------------------------------------------------------------------
# Rank actor
# --------------------------------------------------------------------------------------------


class RankWorker:
    """One rank of a replica (run as a Ray actor): joins the group, builds its shard, runs calls."""

    def __init__(self, rank: int, tp_size: int):
        self.rank = rank
        self.tp_size = tp_size
        self.runner: RankRunner | None = None

    def rendezvous_address(self) -> str:
        """tcp://<this node>:<free port> for the group's TCP store (asked of rank 0)."""
        ip = ray.util.get_node_ip_address()
        with socket.socket() as sock:
            sock.bind((ip, 0))
            port = sock.getsockname()[1]
        return f"tcp://{ip}:{port}"

    def gpu_ids(self) -> list[str]:
        return [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]

    def setup(self, init_method: str, model: RankModel, group_gpu_ids: list[str], collective_timeout_s: float) -> dict:
        own = self.gpu_ids()
        if own and group_gpu_ids:
            # All GPUs of the group visible to every rank (as Ray Train does) so NCCL can use P2P/NVLink.
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(group_gpu_ids)
        use_cuda = bool(own) and torch.cuda.is_available()  # fake GPUs (test clusters) run on the CPU
        device = torch.device("cpu")
        if use_cuda:
            # If CUDA was initialized before the change above, this process still sees its own GPU only.
            shared = torch.cuda.device_count() == len(group_gpu_ids)
            device = torch.device("cuda", group_gpu_ids.index(own[0]) if shared else 0)
        if use_cuda:
            torch.cuda.set_device(device)
        tp = init_process_group(self.tp_size, self.rank, init_method, "nccl" if use_cuda else "gloo",
                                collective_timeout_s)
        self.runner = model.build(tp, device)
        report = getattr(self.runner, "load_report", None)
        weight_bytes = getattr(self.runner, "weight_bytes", None)
        return {
            "rank": self.rank,
            "node_id": ray.get_runtime_context().get_node_id(),
            "device": str(device),
            "bytes_read": getattr(report, "bytes_read", None),
            "weight_bytes": weight_bytes() if weight_bytes else None,
        }

    def prepare_text(self, requests: list) -> None:
        """Rank 0's runner encodes a coming call's prompts while a call may still run (a second actor thread)."""
        prepare = getattr(self.runner, "prepare_text", None)
        if prepare is not None:
            prepare(requests)

    def generate(self, requests: list) -> list | None:
        results = self.runner.generate(requests)
        return results if self.rank == 0 else None


# --------------------------------------------------------------------------------------------
# Driver-side handle
# --------------------------------------------------------------------------------------------


class _RankFailure(Exception):
    pass


class TPReplica(Generic[Request, Result]):
    """Driver-side handle on one TP group; `generate(requests)` runs them on every rank in lockstep."""

    def __init__(self, model: RankModel, config: ReplicaConfig, placement: PlacementGroup | None = None):
        self.model = model
        self.config = config
        self._own_placement = False
        self.placement = placement or ray.util.get_current_placement_group()
        self.ranks: list[Any] = []
        self.rank_info: list[dict] = []
        self.restarts = 0
        # One call at a time: two calls interleaving their collectives on the same ranks would deadlock.
        self._call_lock = threading.Lock()
        self._start()

    # -- group life cycle --------------------------------------------------------------------

    def _placement(self) -> tuple[PlacementGroup, int]:
        """The placement group and the index of the first rank bundle."""
        cfg, shape = self.config, self.config.shape
        if self.placement is None:
            bundles = shape.rank_bundles()
            need = {key: sum(b.get(key, 0) for b in bundles) for key in bundles[0]}
            if not any(node["Alive"] and all(node["Resources"].get(k, 0) >= v for k, v in need.items())
                       for node in ray.nodes()):
                raise ReplicaError(
                    f"no node of this Ray cluster has {need} in total, and a TP group of {shape.tp_size} ranks must fit "
                    f"on one node; lower tp_size or cpus_per_rank (CPU ranks may take fractions of a CPU)"
                )
            self.placement = placement_group(bundles, strategy=STRATEGY)
            self._own_placement = True
        if not self.placement.wait(cfg.start_timeout_s):
            if self._own_placement:
                remove_placement_group(self.placement)
                self.placement = None
            raise ReplicaError(
                f"no node had room for a TP group of {shape.tp_size} ranks ({shape.cpus_per_rank} CPU"
                f"{' + 1 GPU' if shape.use_gpu else ''} each, all on one node) within {cfg.start_timeout_s:.0f} s; "
                "wait for other replicas to finish, lower tp_size or add a node"
            )
        offset = self.placement.bundle_count - shape.tp_size
        if offset < 0:
            raise ReplicaError(f"placement group has {self.placement.bundle_count} bundles, tp_size={shape.tp_size} needs as many")
        return self.placement, offset

    def _start(self) -> None:
        cfg, tp_size = self.config, self.config.shape.tp_size
        pg, offset = self._placement()
        actor_cls = ray.remote(RankWorker)
        self.ranks = [
            actor_cls.options(
                **cfg.shape.rank_actor_options(),
                max_restarts=0,  # a dead rank means a dead group: the handle rebuilds all of it
                max_concurrency=2,  # prepare_text beside a running generate
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=offset + i),
            ).remote(i, tp_size)
            for i in range(tp_size)
        ]
        try:
            address = ray.get(self.ranks[0].rendezvous_address.remote(), timeout=cfg.start_timeout_s)
            gpu_ids = sorted({g for ids in ray.get([r.gpu_ids.remote() for r in self.ranks]) for g in ids})
            setups = [r.setup.remote(address, self.model, gpu_ids, cfg.collective_timeout_s) for r in self.ranks]
            self.rank_info = ray.get(setups, timeout=cfg.start_timeout_s)
        except (RayActorError, RayTaskError, GetTimeoutError) as err:
            self._kill_ranks()
            raise ReplicaError(f"TP group of {tp_size} ranks failed to start: {_reason(err)}") from err
        weights = [sum((info.get("weight_bytes") or {}).values()) / 1e9 for info in self.rank_info]
        log.info("replica up: %d ranks on node %s, weights per rank %s GB", tp_size, self.rank_info[0]["node_id"][:12],
                 ", ".join(f"{w:.2f}" for w in weights))

    def _kill_ranks(self) -> None:
        for actor in self.ranks:
            ray.kill(actor, no_restart=True)
        self.ranks = []

    def shutdown(self) -> None:
        self._kill_ranks()
        if self._own_placement and self.placement is not None:
            remove_placement_group(self.placement)
            self.placement = None

    # -- calls -------------------------------------------------------------------------------

    def generate(self, requests: Sequence[Request]) -> list[Result]:
        """Rank 0's results for `requests`; rebuilds the group and retries after a rank failure."""
        requests = list(requests)
        with self._call_lock:
            return self._generate_with_retries(requests)

    def _generate_with_retries(self, requests: list[Request]) -> list[Result]:
        failures = []
        for attempt in range(1 + self.config.max_retries):
            if not self.ranks:
                self._start()
                self.restarts += 1
            try:
                return self._call(requests)
            except _RankFailure as err:
                failures.append(str(err))
                log.warning("replica call failed (attempt %d): %s; rebuilding the group", attempt + 1, err)
                self._kill_ranks()
        raise ReplicaError(f"{len(requests)} requests failed on {len(failures)} TP groups: {'; '.join(failures)}")

    def _call(self, requests: list[Request]) -> list[Result]:
        refs = [rank.generate.remote(requests) for rank in self.ranks]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        errors: list[RayTaskError] = []
        pending = list(refs)
        deadline = time.monotonic() + self.config.call_timeout_s
        while pending:
            # After a model error on one rank, its peers get the collective timeout to fail the same way.
            timeout = deadline - time.monotonic() if not errors else self.config.collective_timeout_s
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(timeout, 0))
            if not ready:
                silent = sorted(index[r] for r in pending)
                raise _RankFailure(f"ranks {silent} did not answer within the time limit")
            ref = ready[0]
            try:
                results[index[ref]] = ray.get(ref)
            except RayActorError as err:
                raise _RankFailure(f"rank {index[ref]} died: {_reason(err)}") from err
            except RayTaskError as err:
                errors.append(err)
        if errors:
            if len(errors) == len(refs):  # the same model error everywhere: a bad request, the group is fine
                raise errors[0].as_instanceof_cause()
            raise _RankFailure(f"{len(errors)} of {len(refs)} ranks raised: {_reason(errors[0])}")
        return results[0]

    def prepare_text(self, requests: Sequence[Request]) -> None:
        """Have rank 0 encode the prompts of a coming call now, outside the call lock, so they overlap
        the call in flight; a rank failure here is left to the call itself to find."""
        if self.ranks:
            try:
                ray.get(self.ranks[0].prepare_text.remote(list(requests)), timeout=self.config.call_timeout_s)
            except (RayActorError, RayTaskError, GetTimeoutError) as err:
                log.warning("text prefetch failed (the call will encode): %s", _reason(err))

    def node_ids(self) -> list[str]:
        return [info["node_id"] for info in self.rank_info]


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}".strip()


# --------------------------------------------------------------------------------------------
# What the ranks run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratorModel:
    """The whole AVGenerator stack per rank (RankModel): requests are ClipSpec, results ClipOutput.
    `config.device` is replaced by the rank's device."""

    config: Any  # GeneratorConfig

    def build(self, tp: TPGroup, device: torch.device):
        # Imported here: the generator stack pulls in the text encoder and VAEs, which the driver need not load.
        from .generator import AVGenerator

        return AVGenerator(self.config.model_copy(update={"device": str(device)}), tp)


def make_replica(generator_config: Any, shape: ReplicaShape, **options: Any) -> TPReplica:
    """A TP replica of the whole generator: `make_replica(config, shape).generate(list[ClipSpec]) -> list[ClipOutput]`,
    as `AVGenerator(config).generate`. `options` are the other ReplicaConfig fields (timeouts, retries).
    Inside an actor placed by `ReplicaShape` (Ray Data or Serve) the ranks use that actor's placement group."""
    from .magihuman.config import resolve_arch
    from .parallel import check_tp_size
    from .presets import get_preset

    check_tp_size(resolve_arch(get_preset(generator_config.model).dit_arch), shape.tp_size)
    return TPReplica(GeneratorModel(generator_config), ReplicaConfig(shape=shape, **options))
