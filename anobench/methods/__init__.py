"""Every built-in method; importing this package registers them (see registry.py)."""

from anobench.methods.base import AnomalyModule, AnomalyOutput
from anobench.methods.registry import get_method, list_methods, register_method

from anobench.methods import patch_svdd  # noqa: E402,F401  (registers "patch_svdd")
from anobench.methods import memae  # noqa: E402,F401
from anobench.methods import mnad  # noqa: E402,F401
from anobench.methods import nbs  # noqa: E402,F401
from anobench.methods import uninformed_students  # noqa: E402,F401
from anobench.methods import gradcon  # noqa: E402,F401
from anobench.methods import ognet  # noqa: E402,F401
from anobench.methods import synthcp  # noqa: E402,F401

__all__ = ["AnomalyModule", "AnomalyOutput", "get_method", "list_methods", "register_method"]
