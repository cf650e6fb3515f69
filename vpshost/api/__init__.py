"""The REST API (/api/v1) and the web page, both over the service layer."""

from vpshost.api.app import create_app

__all__ = ["create_app"]
