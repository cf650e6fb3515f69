"""The use cases. The only layer that writes state.

Exports are loaded on first use, so a submodule such as ``views`` can be imported
without pulling in SQLAlchemy (the fast `vps list` path depends on that).
"""

from typing import Any

__all__ = ["Caller", "CreateRequest", "Service"]


def __getattr__(name: str) -> Any:
    if name == "Caller":
        from vpshost.service.access import Caller

        return Caller
    if name in ("CreateRequest", "Service"):
        from vpshost.service import core

        return getattr(core, name)
    raise AttributeError(name)
