"""Attribution maps: where the model looked (Grad-CAM, Integrated Gradients, Occlusion), usable without Streamlit.

- ``engine``: :func:`compute_map` for one image, :func:`gradcam_batch` for many, the shared locked models
- ``region``: :func:`central_chest_region` and the outside-the-lungs share
- ``cache``: :func:`load_or_compute` and :func:`is_cached` (maps under ``$CXR_HOME/attributions``)
- ``precompute``: the nightly job's maps for the cases a reviewer opens first
- ``sanity``: the model-randomisation check behind :data:`METHOD_INFO`'s ``sanity``
"""

from scoring.attribution.cache import is_cached, load_or_compute
from scoring.attribution.engine import (
    METHOD_INFO,
    METHODS,
    WHAT_A_MAP_SHOWS,
    AttributionError,
    AttributionMap,
    MethodInfo,
    compute_map,
    gradcam_batch,
)
from scoring.attribution.region import central_chest_region

__all__ = [
    "METHODS",
    "METHOD_INFO",
    "WHAT_A_MAP_SHOWS",
    "AttributionError",
    "AttributionMap",
    "MethodInfo",
    "central_chest_region",
    "compute_map",
    "gradcam_batch",
    "is_cached",
    "load_or_compute",
]
