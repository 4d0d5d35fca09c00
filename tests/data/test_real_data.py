"""The real MVTec AD bottle category, when available (../shared/mvtec_ad or $ANOBENCH_MVTEC_ROOT)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anobench.data import index_category, load_image, load_mask


def _bottle_root() -> Path:
    candidates = [os.environ.get("ANOBENCH_MVTEC_ROOT"), Path(__file__).resolve().parents[2].parent / "shared" / "mvtec_ad"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "bottle" / "train" / "good").is_dir():
            return Path(candidate)
    pytest.skip(
        "real MVTec AD bottle not found: set ANOBENCH_MVTEC_ROOT or place it at "
        f"{candidates[1]}/bottle"
    )


@pytest.mark.real_data
def test_bottle_official_counts_and_masks() -> None:
    root = _bottle_root()
    index = index_category(root, "bottle")
    assert len(index.train) == 209
    counts = Counter(s.defect_type for s in index.test)
    assert counts == {"good": 20, "broken_large": 20, "broken_small": 22, "contamination": 21}
    assert len(index.test) == 83
    for sample in index.test:
        if sample.defect_type == "good":
            assert sample.label == 0 and sample.mask_path is None
            continue
        assert sample.label == 1
        assert sample.mask_path == root / "bottle" / "ground_truth" / sample.defect_type / f"{sample.image_path.stem}_mask.png"
        mask = load_mask(sample.mask_path, expected_size=(900, 900))
        assert mask.shape == (900, 900) and mask.any(), sample.mask_path
    image = load_image(index.train[0].image_path)
    assert image.mode == "RGB" and image.size == (900, 900)
    with Image.open(index.test[0].image_path) as im:
        assert im.size == (900, 900)
    assert np.asarray(image).std() > 5
