"""Persistence of raw usage records (optional: install the ``sql`` extra for SQLStorage)."""

from .base import Storage

__all__ = ["Storage"]
