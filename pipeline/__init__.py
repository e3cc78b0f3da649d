"""Pipeline factory, configs, runners and the `towerflow` command line."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
