"""Blessing-gated push of SavedModels into a TF Serving model root (see component.py)."""

from components.pusher.component import ServingPusher

__all__ = ["ServingPusher"]
