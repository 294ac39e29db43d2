"""The composition root: which parts run together in one process.

``registry_api`` and ``streams`` never import each other; only here are they put side by side.
``feedgrid up`` (and ``feedgrid api --with-worker``) runs the API with the stream worker beside
it (on a thread of its own, sharing the process's chdb engine); ``feedgrid api`` runs the API
alone and ``feedgrid worker`` the worker alone.
"""

from __future__ import annotations

from fastapi import FastAPI

from registry_api.app import LifespanExtension, create_app
from schemas.settings import Settings
from streams.app import embedded_worker


def build_app(settings: Settings) -> FastAPI:
    """The API, with the stream worker inside when ``settings.embedded_worker`` says so."""
    extensions: list[LifespanExtension] = []
    if settings.embedded_worker:
        extensions.append(embedded_worker)
    return create_app(settings, extensions=extensions)
