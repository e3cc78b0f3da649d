"""Custom TFX components of towerflow (ingestion, index building, evaluation, push)."""
