"""HTTP API: `create_app(service, settings)` assembles the FastAPI application."""

from imagefinder.api.app import create_app

__all__ = ["create_app"]
