"""MVTec AD's evaluation protocol settings, defined once (docs/methods.md, MVTec AD protocol).

The metrics use them as defaults and conf/train.yaml reads them through the ``${anobench:<name>}`` resolver
(anobench/config.py), so a config and the code can never disagree about the protocol.
"""

from __future__ import annotations

# Integrate the PRO curve up to this false-positive rate and divide the area by it.
PRO_FPR_LIMIT = 0.3
# "ground_truth": maps upsampled to each mask's size (the protocol); "model": masks downsampled (not official).
EVALUATION_RESOLUTIONS = ("ground_truth", "model")

PROTOCOL = {"pro_fpr_limit": PRO_FPR_LIMIT, "resolution": EVALUATION_RESOLUTIONS[0]}
