"""SliceOptions: how one image is cut and written; the part of the job settings the core needs.

Plain, frozen and JSON-round-trippable, so the job system can store it in the job row and workers
rebuild exactly the same options.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from tessq import defaults
from tessq.errors import ConfigError

PNG_PRESETS = ("fast", "balanced", "small")
SLICE_FORMATS = ("png", "tiff")
SELF_CHECK_MODES = ("sample", "full", "off")


@dataclass(frozen=True)
class SliceOptions:
    """How to cut one image. Exactly one of the three modes applies: grid, tile_size, or num_pieces."""

    num_pieces: int = defaults.NUM_PIECES
    grid: tuple[int, int] | None = None  # (rows, cols); overrides num_pieces
    tile_size: int | None = None  # fixed tile mode (square tiles of this side)
    overlap: int = 0  # px shared by neighbouring tiles in tile mode
    format: str = defaults.SLICE_FORMAT
    png_preset: str = defaults.PNG_PRESET
    compress_level: int | None = None  # overrides the preset's deflate level when set
    world_files: bool = False  # write .pgw/.tfw beside slices of georeferenced images
    series: int = 0  # which tifffile series is "the image"
    level: int = 0  # pyramid level within that series (0 = full resolution)
    min_size: int = defaults.MIN_IMAGE_SIZE
    memory_budget: int = defaults.MEMORY_BUDGET_BYTES
    self_check: str = defaults.SELF_CHECK  # sample | full | off: decode slices written, compare, before the commit

    def __post_init__(self) -> None:
        if self.grid is not None:
            object.__setattr__(self, "grid", tuple(int(v) for v in self.grid))
        self.validate()

    def validate(self) -> None:
        if self.num_pieces < 1:
            raise ConfigError(f"num_pieces must be at least 1, got {self.num_pieces}")
        if self.grid is not None and (len(self.grid) != 2 or min(self.grid) < 1):
            raise ConfigError(f"grid must be ROWSxCOLS with both at least 1, got {self.grid}")
        if self.tile_size is not None and self.tile_size < 1:
            raise ConfigError(f"tile_size must be at least 1 px, got {self.tile_size}")
        if self.overlap < 0 or (self.tile_size is not None and self.overlap >= self.tile_size):
            raise ConfigError(f"overlap must be >= 0 and smaller than tile_size, got {self.overlap}")
        if self.overlap and self.tile_size is None:
            raise ConfigError("overlap only applies with tile_size")
        if self.format not in SLICE_FORMATS:
            raise ConfigError(f"format must be one of {SLICE_FORMATS}, got {self.format!r}")
        if self.png_preset not in PNG_PRESETS:
            raise ConfigError(f"png preset must be one of {PNG_PRESETS}, got {self.png_preset!r}")
        if self.compress_level is not None and not 0 <= self.compress_level <= 12:
            raise ConfigError(f"compress_level must be 0..12, got {self.compress_level}")
        if self.self_check not in SELF_CHECK_MODES:
            raise ConfigError(f"self_check must be one of {SELF_CHECK_MODES}, got {self.self_check!r}")
        if self.min_size < 0:
            raise ConfigError(f"min_size must be >= 0, got {self.min_size}")

    @property
    def mode(self) -> str:
        if self.tile_size is not None:
            return "tile_size"
        return "grid" if self.grid is not None else "pieces"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["grid"] = list(self.grid) if self.grid else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SliceOptions:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if kwargs.get("grid") is not None:
            kwargs["grid"] = tuple(kwargs["grid"])
        return cls(**kwargs)


def parse_grid(text: str) -> tuple[int, int]:
    """'2x4' -> (2, 4): ROWSxCOLS, as the CLI's --grid takes it."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not match:
        raise ConfigError(f"grid must look like ROWSxCOLS (e.g. 2x4), got {text!r}")
    return int(match.group(1)), int(match.group(2))
