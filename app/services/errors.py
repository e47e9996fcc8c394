"""Errors the services raise for the API layer to translate (services do not import FastAPI)."""

from __future__ import annotations


class InputError(ValueError):
    """Input that passed schema validation but not the loaded bundle (an unknown platform, an item with
    no text). The API answers 422 in the same shape as schema errors: `loc` is the field path."""

    def __init__(self, loc: tuple[str | int, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc
        self.msg = msg


class NoBundle(RuntimeError):
    """No bundle is loaded yet (or the first load failed): the service cannot answer (503)."""


class Overloaded(RuntimeError):
    """More requests wait for computation than XREC_RECOMMEND_QUEUE_MAX: refused at once (503 with
    Retry-After), rather than queued until every one of them is late."""
