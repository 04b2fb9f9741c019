"""daVinci-MagiHuman joint audio-video DiT: architecture, checkpoint loading and samplers."""

from .checkpoint import CheckpointError, load_dit, save_checkpoint
from .config import PRESETS, TINY_TEXT_CHANNELS, ArchConfig
from .dit import MagiHumanDiT
from .sampler import Guidance, denoise, prepare_sr_latents

__all__ = [
    "ArchConfig",
    "CheckpointError",
    "Guidance",
    "MagiHumanDiT",
    "PRESETS",
    "TINY_TEXT_CHANNELS",
    "denoise",
    "load_dit",
    "prepare_sr_latents",
    "save_checkpoint",
]
