"""The HTTP API of SPEC section 5: ``create_api`` builds the app, ``flowq api`` serves it."""

from flowq.api.app import create_api

__all__ = ["create_api"]
