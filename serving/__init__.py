"""Online side of towerflow: model server, clients and the recommender service."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
