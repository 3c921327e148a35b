"""What a run config must hold beyond each field's own type, checked when the file is loaded:
the places it writes (a store that is a writable folder, sets outside it), and settings that are
valid but almost surely a mistake (noise too weak to change a pixel), which get a warning.

Each check returns the problems it finds as ``field: message``; the loader raises them as one
ConfigError naming the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.config.noise import alpha_bar

if TYPE_CHECKING:
    from tasks.config.noise import NoiseConfig
    from tasks.config.run import RunConfig

# Noise whose standard deviation is below this many grey levels (of 255) leaves the rejected image
# the chosen one: the visual pair teaches nothing.
MIN_NOISE_GREY_LEVELS = 2.0


def run_problems(config: RunConfig) -> list[str]:
    problems = [*writable_folder("store", config.store), *writable_folder("sets", config.sets)]
    store, sets = config.store.resolve(), config.sets.resolve()
    if sets.is_relative_to(store) or store.is_relative_to(sets):
        problems.append(f"sets: {config.sets} and store {config.store} must not hold one another")
    return problems


def writable_folder(field: str, path: Path) -> list[str]:
    """A folder this run may create and write in: it is one, or its nearest existing parent is."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return [f"{field}: {existing} is not a folder"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"{field}: {existing} is not writable"]
    return []


def warn_noise(noise: NoiseConfig, origin: str) -> None:
    """A warning when the forward noise at step k is too weak to change the image."""
    scale = sum(noise.clip_std) / 3 if noise.space in ("clip", "auto") else 0.5  # a space unit in [0, 1] pixel units
    levels = 255 * scale * (1 - alpha_bar(noise)) ** 0.5
    if levels < MIN_NOISE_GREY_LEVELS:
        warnings.warn(
            f"{origin}: noise.k={noise.k} changes pixels by about {levels:.2f} grey levels (std, under "
            f"{MIN_NOISE_GREY_LEVELS:g}): visual pairs will be near-identical images; raise noise.k",
            stacklevel=2,
        )
