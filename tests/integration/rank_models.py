"""Test helpers for TP replicas: a DiT-only rank model, a pool of replicas, and a rank that holds
a call open until the test kills it (so a kill lands mid-call whatever the machine's load)."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import ray
import torch

from model.magihuman import denoise, load_dit
from model.parallel import TPGroup
from model.replica import RankModel, ReplicaConfig, ReplicaError, TPReplica

HOLD_FILE = "held-rank"


def reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}".strip()


def hold_until_killed(hold_dir: Path, give_up_s: float = 300.0) -> None:
    """The first caller ever claims the hold, names its actor in HOLD_FILE and waits to be killed;
    later callers (the ranks of a rebuilt group) go on."""
    try:
        (hold_dir / "claimed").mkdir()  # atomic: exactly one rank ever holds
    except FileExistsError:
        return
    scratch = hold_dir / f"{HOLD_FILE}.tmp"
    scratch.write_text(ray.get_runtime_context().get_actor_id())
    scratch.replace(hold_dir / HOLD_FILE)  # the killer reads the whole id or no file
    time.sleep(give_up_s)
    raise TimeoutError(f"rank held {give_up_s:.0f} s and never killed")


def kill_held_rank(replicas: Sequence[TPReplica], hold_dir: Path, timeout_s: float = 180.0) -> int:
    """Wait until a rank of one of `replicas` holds its call, kill it; returns that replica's index."""
    held = hold_dir / HOLD_FILE
    deadline = time.monotonic() + timeout_s
    while not held.exists():
        assert time.monotonic() < deadline, f"no rank reached the hold within {timeout_s:.0f} s"
        time.sleep(0.05)
    actor_id = held.read_text()
    for index, replica in enumerate(replicas):
        for rank in replica.ranks:
            if rank._actor_id.hex() == actor_id:
                ray.kill(rank, no_restart=True)
                return index
    raise AssertionError(f"held actor {actor_id} is in none of the replicas")


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


@dataclass(frozen=True)
class DiTModel:
    """The DiT alone with the distilled sampler (RankModel): requests are DenoiseRequest, results
    (video [C, T, h, w], audio [N, Ca]) clean latents. For tests of the TP machinery."""

    arch: Any = "tiny"  # preset name, dict or ArchConfig
    checkpoint_dir: str | None = None
    compute_dtype: str = "float32"
    seed: int = 0
    steps: int = 8
    # Set: the first call to reach rank `hold_rank` of any group claims HOLD_FILE in this folder
    # (its actor id inside) and waits there until the test kills that actor.
    hold_dir: str | None = None
    hold_rank: int = 1

    def build(self, tp: TPGroup, device: torch.device) -> "DiTDenoiser":
        return DiTDenoiser(self, tp, device)


class DiTDenoiser:
    def __init__(self, spec: DiTModel, tp: TPGroup, device: torch.device):
        self.spec = spec
        self.dit = load_dit(spec.checkpoint_dir, arch=spec.arch, device=device,
                            compute_dtype=getattr(torch, spec.compute_dtype), seed=spec.seed, tp=tp)
        self.load_report = self.dit.load_report
        self.rank = tp.rank

    @torch.inference_mode()
    def generate(self, requests: list[DenoiseRequest]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Requests of equal latent shape share one batch; each draws its noise from its own seed."""
        if self.spec.hold_dir is not None and self.rank == self.spec.hold_rank:
            hold_until_killed(Path(self.spec.hold_dir))
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


@dataclass
class FailedRequest:
    """A request the pool could not run, with the reason."""

    request: Any
    reason: str


class ReplicaPool:
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

    def generate(self, requests: Sequence[Any], batches: list[list[int]] | None = None) -> list[Any]:
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
                    finish(batch, [FailedRequest(requests[i], reason(err)) for i in batch])

        with ThreadPoolExecutor(len(self.replicas)) as executor:
            list(executor.map(serve, self.replicas))
        return results

    def shutdown(self) -> None:
        for replica in self.replicas:
            replica.shutdown()
