"""``medfm serve``: the similar-case search service (HTTP API and the page that uses it)."""

from medfm.service.app import ServiceSettings, create_app, serve

__all__ = ["ServiceSettings", "create_app", "serve"]
