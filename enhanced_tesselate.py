"""The seed's core-functions module, kept so its code runs unchanged after `pip install tessq`.

    from enhanced_tesselate import verify_images_identical
    result = verify_images_identical("original.tif", "reconstructed.tif")
    print(f"Images identical: {result['overall_identical']}")

`verify_images_identical` also takes a tessq image folder (or its metadata.json) as either side. The other
functions are tessq's: tessellate_image (cut one image into a folder), reconstruct (reassemble it),
verify_image (compare a folder with its source, slice by slice).
"""

from __future__ import annotations

from tessq.cut.core import tessellate_image
from tessq.cut.verify import reconstruct, verify_image, verify_images_identical
from tessq.options import SliceOptions

tesselate_image = tessellate_image  # the seed's spelling

__all__ = [
    "SliceOptions",
    "reconstruct",
    "tesselate_image",
    "tessellate_image",
    "verify_image",
    "verify_images_identical",
]
