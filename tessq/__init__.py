"""tessq: cut large TIFF collections into exact, lossless pieces, resumably, with proof.

Public API: BatchJob/BatchTesselator (the seed's batch interface), tessellate_image, reconstruct,
verify_image and verify_images_identical. Heavy modules load lazily so `import tessq` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "BatchJob",
    "BatchTesselator",
    "SliceOptions",
    "__version__",
    "reconstruct",
    "tessellate_image",
    "verify_image",
    "verify_images_identical",
]

_LAZY = {
    "BatchJob": "tessq.api",
    "BatchTesselator": "tessq.api",
    "SliceOptions": "tessq.options",
    "tessellate_image": "tessq.cut.core",
    "reconstruct": "tessq.cut.verify",
    "verify_image": "tessq.cut.verify",
    "verify_images_identical": "tessq.cut.verify",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tessq' has no attribute {name!r}")
