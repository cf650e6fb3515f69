"""The use cases. The only layer that writes state."""

from vpshost.service.access import Caller
from vpshost.service.core import CreateRequest, Service

__all__ = ["Caller", "CreateRequest", "Service"]
