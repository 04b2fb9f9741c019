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
- otherwise (a driver, the CLI, `ReplicaPool`) the replica makes its own.

Failure: a rank that dies (RayActorError) or stops answering takes the whole group down (its peers
are stuck in a collective). The replica kills the survivors, starts a fresh group in the same
placement group and retries the requests in flight, `max_retries` times; then it raises
ReplicaError. An exception raised by the model code on every rank alike (a bad request) is
re-raised as is, and the group is kept.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Generic, Protocol, Sequence, TypeVar

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
        self.calls_started = 0

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
        return {
            "rank": self.rank,
            "node_id": ray.get_runtime_context().get_node_id(),
            "device": str(device),
            "bytes_read": getattr(report, "bytes_read", None),
        }

    def generate(self, requests: list) -> list | None:
        self.calls_started += 1
        results = self.runner.generate(requests)
        return results if self.rank == 0 else None

    def progress(self) -> int:
        """Calls this rank has started (answered while a call runs: the actor is threaded)."""
        return self.calls_started


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
                max_concurrency=2,  # `progress` answers while `generate` runs
                max_restarts=0,  # a dead rank means a dead group: the handle rebuilds all of it
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
        log.info("replica up: %d ranks on node %s", tp_size, self.rank_info[0]["node_id"][:12])

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

    def progress(self) -> list[int]:
        """Calls each rank has started."""
        return ray.get([rank.progress.remote() for rank in self.ranks])

    def node_ids(self) -> list[str]:
        return [info["node_id"] for info in self.rank_info]


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}".strip()


# --------------------------------------------------------------------------------------------
# Pool of replicas
# --------------------------------------------------------------------------------------------


@dataclass
class FailedRequest:
    """A request the pool could not run, with the reason."""

    request: Any
    reason: str


class ReplicaPool(Generic[Request, Result]):
    """`num_replicas` TP replicas, each in its own placement group (Ray spreads them over nodes as
    resources require). `generate` splits requests into batches, runs them on whichever replica is
    free, and retries a batch whose replica failed on another replica, `max_retries` times; what
    still fails comes back as FailedRequest rows, so every request ends done or failed with a reason."""

    def __init__(self, model: RankModel, config: ReplicaConfig, num_replicas: int, max_retries: int = 1):
        if num_replicas < 1:
            raise ValueError(f"num_replicas={num_replicas} must be >= 1")
        # Replicas do not retry themselves: the pool moves a failed batch elsewhere while they rebuild.
        replica_config = config.model_copy(update={"max_retries": 0})
        with ThreadPoolExecutor(num_replicas) as starter:
            self.replicas = list(starter.map(lambda _: TPReplica(model, replica_config), range(num_replicas)))
        self.max_retries = max_retries
        self.retried_batches = 0

    def generate(self, requests: Sequence[Request], batches: list[list[int]] | None = None) -> list[Result | FailedRequest]:
        """Results in request order. `batches` (lists of request indices) defaults to one request per batch."""
        requests = list(requests)
        batches = batches or [[i] for i in range(len(requests))]
        results: list[Any] = [None] * len(requests)
        work: queue.Queue = queue.Queue()
        for batch in batches:
            work.put((batch, 0, []))
        remaining = [len(batches)]
        lock = threading.Lock()

        def finish(batch: list[int], values: list[Any]) -> None:
            with lock:
                for i, value in zip(batch, values):
                    results[i] = value
                remaining[0] -= 1

        def serve(replica: TPReplica) -> None:
            while True:
                with lock:
                    if remaining[0] == 0:
                        return
                try:
                    batch, attempt, reasons = work.get(timeout=0.1)
                except queue.Empty:
                    continue
                try:
                    finish(batch, replica.generate([requests[i] for i in batch]))
                except ReplicaError as err:
                    reasons = reasons + [str(err)]
                    if attempt < self.max_retries:
                        with lock:
                            self.retried_batches += 1
                        work.put((batch, attempt + 1, reasons))  # another replica (or this one, rebuilt) takes it
                    else:
                        finish(batch, [FailedRequest(requests[i], "; ".join(reasons)) for i in batch])
                except Exception as err:  # noqa: BLE001 - a model error fails its batch, not the pool
                    finish(batch, [FailedRequest(requests[i], _reason(err)) for i in batch])

        with ThreadPoolExecutor(len(self.replicas)) as executor:
            list(executor.map(serve, self.replicas))
        return results

    def shutdown(self) -> None:
        for replica in self.replicas:
            replica.shutdown()


# --------------------------------------------------------------------------------------------
# What the ranks run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DenoiseRequest:
    """One clip at latent level: its prompt embedding and latent sizes; noise comes from `seed`."""

    text: torch.Tensor  # [L, text_in_channels], real tokens only
    latent_frames: int
    latent_height: int
    latent_width: int
    audio_latents: int
    seed: int = 0

    @property
    def shape_key(self) -> tuple[int, int, int, int]:
        return (self.latent_frames, self.latent_height, self.latent_width, self.audio_latents)

    @property
    def tokens(self) -> int:
        return self.latent_frames * (self.latent_height // 2) * (self.latent_width // 2) + self.audio_latents + len(self.text)


@dataclass(frozen=True)
class DiTModel:
    """The DiT alone with the distilled sampler (RankModel): requests are DenoiseRequest, results
    (video [C, T, h, w], audio [N, Ca]) clean latents. For benchmarks and tests of the TP machinery."""

    arch: Any = "tiny"  # preset name, dict or ArchConfig
    checkpoint_dir: str | None = None
    compute_dtype: str = "float32"
    seed: int = 0
    steps: int = 8

    def build(self, tp: TPGroup, device: torch.device) -> "DiTDenoiser":
        return DiTDenoiser(self, tp, device)


class DiTDenoiser:
    def __init__(self, spec: DiTModel, tp: TPGroup, device: torch.device):
        from .magihuman import load_dit

        self.spec = spec
        self.dit = load_dit(spec.checkpoint_dir, arch=spec.arch, device=device,
                            compute_dtype=getattr(torch, spec.compute_dtype), seed=spec.seed, tp=tp)
        self.load_report = self.dit.load_report

    @torch.inference_mode()
    def generate(self, requests: list[DenoiseRequest]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Requests of equal latent shape share one batch; each draws its noise from its own seed."""
        from .magihuman import denoise

        arch, device = self.dit.arch, self.dit.device
        results: list[Any] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(request.shape_key, []).append(i)
        for (frames, height, width, audio_len), indices in groups.items():
            gens = [torch.Generator().manual_seed(requests[i].seed) for i in indices]
            video = torch.stack([torch.randn(arch.latent_channels, frames, height, width, generator=g) for g in gens])
            audio = torch.stack([torch.randn(audio_len, arch.audio_in_channels, generator=g) for g in gens])
            lens = [len(requests[i].text) for i in indices]
            text = torch.zeros(len(indices), max(lens), arch.text_in_channels)
            for row, i in enumerate(indices):
                text[row, : lens[row]] = requests[i].text
            video, audio = denoise(self.dit, video.to(device), audio.to(device), text.to(device), lens,
                                   steps=self.spec.steps, mode="distill", generator=gens)
            for row, i in enumerate(indices):
                results[i] = (video[row].cpu(), audio[row].cpu())
        return results


def pack_batches(tokens: Sequence[int], keys: Sequence[Any], max_tokens: int) -> list[list[int]]:
    """Sequence packing: indices of requests grouped by shape key, each group cut into batches of at
    most `max_tokens` tokens (a request larger than that runs alone), so many short clips share one
    forward and long ones do not exceed the replica's memory."""
    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    batches: list[list[int]] = []
    for indices in groups.values():
        batch, size = [], 0
        for i in indices:
            if batch and size + tokens[i] > max_tokens:
                batches.append(batch)
                batch, size = [], 0
            batch.append(i)
            size += tokens[i]
        batches.append(batch)
    return batches


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


def clip_batches(specs: Sequence[Any], model_name: str, max_tokens: int) -> list[list[int]]:
    """`pack_batches` for ClipSpecs: clips of one geometry (and image conditioning) share batches of at
    most `max_tokens` base-pass video + audio tokens."""
    from .magihuman.sizes import clip_geometry
    from .presets import get_preset

    preset = get_preset(model_name)
    geometries = [
        clip_geometry(s.duration_s, s.aspect_ratio, s.resolution, base_sizes=preset.base_sizes, sr_sizes=preset.sr_sizes)
        for s in specs
    ]
    tokens = [g.latent_frames * (g.base_latent_hw[0] // 2) * (g.base_latent_hw[1] // 2) + g.audio_latents for g in geometries]
    keys = [(g, s.reference_image is not None) for g, s in zip(geometries, specs)]
    return pack_batches(tokens, keys, max_tokens)
