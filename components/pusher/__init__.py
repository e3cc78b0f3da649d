"""Blessing-gated push of SavedModels into a TF Serving model root (see component.py)."""

from towerflow.components.pusher.component import ServingPusher

__all__ = ["ServingPusher"]
