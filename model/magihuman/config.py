"""Architecture of the daVinci-MagiHuman DiT and the named presets paddock ships.

Field names follow the reference `ModelConfig` so a reference `config.json`
(flat, or nested under `arch_config` / `arch`) loads as is.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

CoordsStyle = Literal["v1", "v2"]

# Video tokens are 1x2x2 (t, h, w) patches of the VAE latent.
PATCH_SIZE = (1, 2, 2)

# Reference ModelConfig fields that do not change inference in paddock: training-only
# settings, the parameter dtype (fixed by the checkpoint layout) and the derived head counts
# (checked against hidden_size / head_dim / num_query_groups when present).
_IGNORED_REFERENCE_FIELDS = {"checkpoint_qk_layernorm_rope", "params_dtype", "tread_config", "activation_type"}
_DERIVED_REFERENCE_FIELDS = {"num_heads_q", "num_heads_kv"}
_REQUIRED_FIELDS = {"num_layers", "hidden_size", "head_dim"}  # what marks a json as an architecture of ours
# How tokens are laid out and attend, rather than the weights' shapes: the released super-resolution
# folders do not say, and the reference hard-codes them per model.
LAYOUT_FIELDS = ("coords_style", "frame_receptive_field", "local_attn_layers")


@dataclass(frozen=True)
class ArchConfig:
    num_layers: int = 40
    hidden_size: int = 5120
    head_dim: int = 128
    num_query_groups: int = 8
    video_in_channels: int = 48 * 4
    audio_in_channels: int = 64
    text_in_channels: int = 3584
    # "Sandwich" layers with separate video / audio / text weights fused in one tensor.
    mm_layers: tuple[int, ...] = (0, 1, 2, 3, 36, 37, 38, 39)
    # Layers with the non-gated gelu7 MLP (4x hidden); the rest use swiglu7.
    gelu7_layers: tuple[int, ...] = (0, 1, 2, 3)
    # Layers where video tokens see only video tokens of nearby frames (super-resolution model).
    local_attn_layers: tuple[int, ...] = ()
    enable_attn_gating: bool = True
    post_norm_layers: tuple[int, ...] = ()
    # Data-side defaults the model was trained with (reference DataProxyConfig); `velocity`
    # uses them when the caller passes None.
    coords_style: CoordsStyle = "v2"
    frame_receptive_field: int = -1

    def __post_init__(self) -> None:
        for name in ("mm_layers", "gelu7_layers", "local_attn_layers", "post_norm_layers"):
            object.__setattr__(self, name, tuple(int(i) for i in getattr(self, name)))
        if self.hidden_size % self.head_dim:
            raise ValueError(f"hidden_size={self.hidden_size} must be a multiple of head_dim={self.head_dim}")
        if self.head_dim % 8:
            raise ValueError(f"head_dim={self.head_dim} must be a multiple of 8 (the Fourier RoPE uses head_dim // 8 bands per axis)")
        if self.num_heads_q % self.num_query_groups:
            raise ValueError(
                f"num_query_groups={self.num_query_groups} must divide the {self.num_heads_q} query heads"
            )
        if self.video_in_channels % (PATCH_SIZE[0] * PATCH_SIZE[1] * PATCH_SIZE[2]):
            raise ValueError(f"video_in_channels={self.video_in_channels} must be latent channels x 4 (1x2x2 patches)")
        if self.coords_style not in ("v1", "v2"):
            raise ValueError(f"coords_style={self.coords_style!r} must be 'v1' or 'v2'")
        for name in ("mm_layers", "gelu7_layers", "local_attn_layers", "post_norm_layers"):
            bad = [i for i in getattr(self, name) if not 0 <= i < self.num_layers]
            if bad:
                raise ValueError(f"{name} has layer indices {bad} outside 0..{self.num_layers - 1}")

    @property
    def num_heads_q(self) -> int:
        return self.hidden_size // self.head_dim

    @property
    def num_heads_kv(self) -> int:
        return self.num_query_groups

    @property
    def latent_channels(self) -> int:
        return self.video_in_channels // (PATCH_SIZE[0] * PATCH_SIZE[1] * PATCH_SIZE[2])

    def num_modalities(self, layer_idx: int) -> int:
        return 3 if layer_idx in self.mm_layers else 1

    def mlp_intermediate_size(self, layer_idx: int) -> int:
        if layer_idx in self.gelu7_layers:
            return 4 * self.hidden_size
        # swiglu7: 2/3 of 4x hidden, rounded down to a multiple of 4 (the up projection is twice this).
        return int(self.hidden_size * 4 * 2 / 3) // 4 * 4

    def replace(self, **changes: Any) -> "ArchConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in dataclasses.fields(self)}

    def with_layout_of(self, other: "ArchConfig") -> "ArchConfig":
        """This architecture with the token layout (LAYOUT_FIELDS) of `other`."""
        return self.replace(**{name: getattr(other, name) for name in LAYOUT_FIELDS})

    @classmethod
    def is_arch_json(cls, data: Any) -> bool:
        """Whether `data` is in a layout `from_dict` reads (flat, or under `arch_config` / `arch`, the
        reference's field names) rather than another tool's config.json: it names the core fields
        and nothing this class does not know."""
        if not isinstance(data, dict):
            return False
        for wrapper in ("arch_config", "arch"):
            if isinstance(data.get(wrapper), dict):
                data = data[wrapper]
                break
        known = {f.name for f in dataclasses.fields(cls)} | _IGNORED_REFERENCE_FIELDS | _DERIVED_REFERENCE_FIELDS
        return _REQUIRED_FIELDS <= set(data) <= known

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ArchConfig":
        """Build from a flat dict, a reference pipeline config (`arch_config`) or a test-vector json (`arch`)."""
        for wrapper in ("arch_config", "arch"):
            if isinstance(data.get(wrapper), dict):
                outer = data
                data = dict(data[wrapper])
                proxy = outer.get("data_proxy") or outer.get("evaluation_config", {}).get("data_proxy_config") or {}
                for key in ("coords_style", "frame_receptive_field"):
                    if key in proxy and key not in data:
                        data[key] = proxy[key]
                break
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known - _IGNORED_REFERENCE_FIELDS - _DERIVED_REFERENCE_FIELDS
        if unknown:
            raise ValueError(f"unknown architecture fields {sorted(unknown)}; known fields: {sorted(known)}")
        arch = cls(**{k: v for k, v in data.items() if k in known})
        for key in _DERIVED_REFERENCE_FIELDS:
            given = data.get(key)
            if given and given != getattr(arch, key):
                raise ValueError(
                    f"{key}={given} contradicts hidden_size/head_dim/num_query_groups, which give {getattr(arch, key)}"
                )
        return arch

    @classmethod
    def from_json(cls, path: str | Path) -> "ArchConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: {err}") from err


# The 1080p super-resolution DiT runs frame-local attention everywhere except layers 3, 7, ..., 31.
_SR_1080P_LOCAL_LAYERS = tuple(i for i in range(40) if i % 4 != 3 or i >= 35)

PRESETS: dict[str, ArchConfig] = {
    "magihuman-base": ArchConfig(),
    "magihuman-distill": ArchConfig(),
    "magihuman-sr-540p": ArchConfig(coords_style="v1"),
    "magihuman-sr-1080p": ArchConfig(
        local_attn_layers=_SR_1080P_LOCAL_LAYERS, coords_style="v1", frame_receptive_field=11
    ),
    # Real architecture at toy width for CPU runs and tests; same shape as the reference test
    # vector in tests/data/magihuman-tiny. Its text encoder must emit TINY_TEXT_CHANNELS features.
    "tiny": ArchConfig(
        num_layers=6,
        hidden_size=128,
        head_dim=32,
        num_query_groups=2,
        text_in_channels=96,
        mm_layers=(0, 1, 4, 5),
        gelu7_layers=(0, 1),
    ),
}

TINY_TEXT_CHANNELS = PRESETS["tiny"].text_in_channels


def resolve_arch(arch: "ArchConfig | str | dict[str, Any]") -> ArchConfig:
    """An ArchConfig from an instance, a preset name or a dict of fields."""
    if isinstance(arch, ArchConfig):
        return arch
    if isinstance(arch, str):
        if arch not in PRESETS:
            raise ValueError(f"unknown architecture preset {arch!r}; presets: {sorted(PRESETS)}")
        return PRESETS[arch]
    if isinstance(arch, dict):
        return ArchConfig.from_dict(arch)
    raise TypeError(f"arch must be an ArchConfig, a preset name or a dict, not {type(arch).__name__}")
