"""A model replica that takes its whole process down (as a host OOM or a native crash does)
when a prompt asks for it; every other prompt renders normally."""

from __future__ import annotations

import os

from model.generator import AVGenerator


class CrashingGenerator(AVGenerator):
    def generate(self, specs, *args, **kwargs):
        if any("CRASH" in spec.prompt for spec in specs):
            os._exit(137)
        return super().generate(specs, *args, **kwargs)


def crashing_factory(tp_size: int, device: str):
    return CrashingGenerator
