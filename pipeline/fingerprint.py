"""The delivery fingerprint: what, besides a render's request, decides the files it delivers.

A render's ``render_id`` hashes its request; the fingerprint covers the rest: the
model's weights (a digest of the checkpoint's index and shard files; for a preset
with random weights, its name and the seeds its components are built from), the
sampler settings, the decoders, the reference image's bytes, and the channel
profile. The completion record keeps it, and a re-run compares: a render whose
model part changed is made again; one whose profile alone changed is re-delivered
from its archived frames and 24-bit stem (pipeline/redeliver.py), without the model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from model.generator import SR_COMPONENT, GeneratorConfig
from model.presets import get_preset
from pipeline.mux import ChannelProfile
from schemas.render import RenderRequest

# Shards are tens of GB: each is identified by its name, size and a sample of its
# bytes (the safetensors header sits at the start) rather than read whole.
_SAMPLE_BYTES = 1 << 20
_WEIGHT_SUFFIXES = (".json", ".safetensors", ".zst", ".pth", ".bin", ".model")


class ModelFingerprint(BaseModel):
    """The model part, for the whole run: ``weights`` maps each component to its digest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_id: str
    weights: dict[str, str]
    sampler: str
    decoder: str


class DeliveryFingerprint(ModelFingerprint):
    """Everything that changes one render's delivered files and is not in its render_id
    (``weights``: only the components that render uses)."""

    reference_image_sha256: str | None = None
    profile: ChannelProfile

    def needs_render(self, made: DeliveryFingerprint) -> bool:
        """Whether deliverables made under ``made`` cannot be reused at all (the model would draw other frames)."""
        return self.model_dump(exclude={"profile"}) != made.model_dump(exclude={"profile"})

    def digest(self) -> str:
        """``<model part>:<profile part>``, 16 hex digits each: what the DAM's manifest keeps, so
        a re-run compares it (pipeline.skipcheck's index actions) without reading the completion record."""
        model_part = self.model_dump_json(exclude={"profile"})
        profile_part = self.profile.model_dump_json()
        return f"{hashlib.sha256(model_part.encode()).hexdigest()[:16]}:{hashlib.sha256(profile_part.encode()).hexdigest()[:16]}"


def _file_digest(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.sha256(f"{path.name}\0{size}\0".encode())
    with open(path, "rb") as handle:
        if path.suffix == ".json" or size <= 2 * _SAMPLE_BYTES:
            digest.update(handle.read())
        else:
            digest.update(handle.read(_SAMPLE_BYTES))
            handle.seek(size - _SAMPLE_BYTES)
            digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def folder_digest(folder: Path) -> str:
    """A digest of a component folder's index and weight files (names, sizes, sampled bytes)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)):
        digest.update(f"{path.relative_to(folder)}\0{_file_digest(path)}\n".encode())
    return digest.hexdigest()


def weights_digests(config: GeneratorConfig) -> dict[str, str]:
    """component -> digest of the weights the replicas load: for random weights, the preset's
    name and the configuration its components are seeded from; else a digest of each
    component folder there is (a missing one fails the run's own check, with the fix)."""
    preset = get_preset(config.model)
    if preset.tiny is not None:
        return {"random": hashlib.sha256(f"{preset.name}:{preset.tiny!r}:{preset.dit_arch!r}:{preset.sr_archs!r}"
                                         .encode()).hexdigest()}
    digests = {}
    for component in preset.folders:
        try:
            path = config.component_path(preset, component)
        except ValueError:
            continue
        if path.is_dir():
            digests[component] = folder_digest(path)
    return digests


def model_fingerprint(config: GeneratorConfig) -> ModelFingerprint:
    preset = get_preset(config.model)
    sampler = (f"{preset.mode} steps={config.steps or preset.steps} sr_steps={config.sr_steps or preset.sr_steps} "
               f"shift={preset.shift:g} cfg={'yes' if preset.uses_cfg else 'no'} dtype={config.dtype or 'auto'} "
               f"rate={config.sample_rate}")
    decoder = "tiny" if preset.tiny is not None else (
        f"video={preset.folders.get('video_vae')} audio={preset.folders.get('audio_vae')}")
    return ModelFingerprint(model_id=config.model, weights=weights_digests(config), sampler=sampler, decoder=decoder)


def reference_sha256(location: str) -> str | None:
    path = Path(location.removeprefix("file://"))
    # An unreadable image fails the render itself, with the reason; it has no fingerprint.
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def delivery_fingerprint(model: ModelFingerprint, profile: ChannelProfile,
                         request: RenderRequest) -> DeliveryFingerprint:
    return fingerprint_for(model, profile, request.resolution, request.reference_image_uri)


def fingerprint_for(model: ModelFingerprint, profile: ChannelProfile, resolution: str,
                    reference_image_uri: str | None) -> DeliveryFingerprint:
    """The fingerprint of every request of this resolution and reference image: the only two
    request fields it depends on, so a plan of a million requests computes it per distinct pair."""
    used = {c: d for c, d in model.weights.items()
            if not c.startswith("sr_") or c == SR_COMPONENT.get(resolution)}
    reference = reference_sha256(reference_image_uri) if reference_image_uri else None
    return DeliveryFingerprint(**model.model_dump(exclude={"weights"}), weights=used,
                               reference_image_sha256=reference, profile=profile)
