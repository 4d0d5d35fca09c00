"""Method registry: snake_case name -> LightningModule class.

`conf/method/<name>.yaml` instantiates the class through `_target_`; the registry lets code and tests
look a method up by the same name (`method=<name>` on the command line) and list every method.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from anobench.errors import ConfigError

_METHODS: dict[str, type] = {}

T = TypeVar("T", bound=type)


def register_method(name: str) -> Callable[[T], T]:
    """Class decorator: make a method available as `method=<name>`."""

    def wrap(cls: T) -> T:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method name {name!r} is registered twice")
        _METHODS[name] = cls
        cls.method_name = name
        return cls

    return wrap


def _import_all() -> None:
    # Importing the package registers every built-in method.
    import anobench.methods  # noqa: F401


def get_method(name: str) -> type:
    """Return the class registered as `name`; the error lists the known names."""
    _import_all()
    try:
        return _METHODS[name]
    except KeyError:
        known = ", ".join(sorted(_METHODS)) or "(none)"
        raise ConfigError(f"unknown method {name!r} (key 'method'); available: {known}") from None


def list_methods() -> list[str]:
    """Names of every registered method, sorted."""
    _import_all()
    return sorted(_METHODS)
