"""Data layer: MVTec AD, MPDD, BTAD, VisA and own-folder indexing/loading, the synthetic generator, download and
the datamodule.

Names are imported lazily so that ``import anobench.data.synthetic`` (used by worker processes
and tests) does not pay for importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AnomalyDataModule": "anobench.data.datamodule",
    "index_category": "anobench.data.mvtec",
    "index_folder": "anobench.data.mvtec",
    "Layout": "anobench.data.mvtec",
    "index_dataset": "anobench.data.layouts",
    "index_visa_csv": "anobench.data.layouts",
    "folder_layout": "anobench.data.layouts",
    "DATASET_CATEGORIES": "anobench.data.layouts",
    "VISA_CATEGORIES": "anobench.data.layouts",
    "BTAD_CATEGORIES": "anobench.data.layouts",
    "MPDD_CATEGORIES": "anobench.data.layouts",
    "check_decodable": "anobench.data.mvtec",
    "resolve_root": "anobench.data.mvtec",
    "load_image": "anobench.data.mvtec",
    "load_mask": "anobench.data.mvtec",
    "Sample": "anobench.data.mvtec",
    "CategoryIndex": "anobench.data.mvtec",
    "MVTEC_CATEGORIES": "anobench.data.mvtec",
    "MVTEC_TEXTURES": "anobench.data.mvtec",
    "MVTEC_OBJECTS": "anobench.data.mvtec",
    "SYNTHETIC_CATEGORIES": "anobench.data.synthetic",
    "generate_category": "anobench.data.synthetic",
    "ensure_synthetic": "anobench.data.synthetic",
    "download_mvtec": "anobench.data.download",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from anobench.data.datamodule import AnomalyDataModule
    from anobench.data.download import download_mvtec
    from anobench.data.layouts import (
        BTAD_CATEGORIES,
        DATASET_CATEGORIES,
        MPDD_CATEGORIES,
        VISA_CATEGORIES,
        folder_layout,
        index_dataset,
        index_visa_csv,
    )
    from anobench.data.mvtec import (
        MVTEC_CATEGORIES,
        MVTEC_OBJECTS,
        MVTEC_TEXTURES,
        CategoryIndex,
        Layout,
        Sample,
        check_decodable,
        index_category,
        index_folder,
        load_image,
        load_mask,
        resolve_root,
    )
    from anobench.data.synthetic import SYNTHETIC_CATEGORIES, ensure_synthetic, generate_category


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'anobench.data' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
