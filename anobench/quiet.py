"""Targeted silencing of third-party console noise in the train/eval path (nothing else is filtered):

- Lightning's advertising tips ("💡 Tip: ... litlogger / litmodels"), logged at INFO by its rank-zero logger;
- faiss's loader INFO lines ("Loading faiss with AVX2 support ... Could not load library ... No module
  named 'faiss.swigfaiss_avx2'"): how the wheel picked its build, printed on every Patch SVDD test
  (its warnings and errors still show);
- torch's FutureWarning "`isinstance(treespec, LeafSpec)` is deprecated", raised inside Lightning's own
  pytree helper (not our code; nothing to change on our side).

The `weights_only` note is not filtered: train passes `weights_only=False` to `save_checkpoint` explicitly.
"""

from __future__ import annotations

import logging
import warnings

ADVERT_PREFIX = "💡 Tip:"
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(ADVERT_PREFIX)


_FILTER = _DropAdverts()


def quiet_third_party() -> None:
    """Install the filters (idempotent)."""
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=LEAFSPEC_WARNING, category=FutureWarning)
