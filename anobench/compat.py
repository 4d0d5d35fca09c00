"""The oldest Lightning anobench runs on, checked when the methods are imported.

pip may keep an older Lightning that satisfies another package; the GAN helper
(methods/components/gan.py) would then fail mid-training with an AttributeError on
``toggled_optimizer``. Checking once at import turns that into one clear error up front.
"""

from __future__ import annotations

# First release with every Lightning API anobench uses: LightningModule.toggled_optimizer (2.5.2).
# pyproject.toml's `lightning>=` floor is the same (tests/test_precision.py checks both agree).
LIGHTNING_FLOOR = "2.5.2"


def check_lightning_version(installed: str | None = None) -> None:
    """Raise ImportError naming the installed and the required version when Lightning is older than the floor."""
    from packaging.version import Version

    if installed is None:
        import lightning

        installed = lightning.__version__
    if Version(installed) < Version(LIGHTNING_FLOOR):
        raise ImportError(f"anobench needs lightning>={LIGHTNING_FLOOR} (LightningModule.toggled_optimizer), but "
                          f"lightning {installed} is installed; upgrade with: pip install 'lightning>={LIGHTNING_FLOOR},<3'")
