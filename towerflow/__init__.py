"""towerflow: an end-to-end TFX recommender and the online service it feeds.

The project's folders stay where the layout puts them (`pipeline/`,
`components/`, `models/`, `serving/`, `cli/`) and are installed as
subpackages of this one namespace (`towerflow.pipeline`, ...; see setup.py's
`package_dir`), so installing towerflow beside another package called
`models` or `serving` breaks neither. Layers, lowest first, each importing
only the ones below it: models -> components -> serving -> pipeline -> cli.
"""

import os

# TensorFlow Recommenders needs Keras 2. Every towerflow module is imported through this package, so
# setting the switch here, once, puts it before any TensorFlow import in the process.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.2.0"
# The subpackages, lowest layer first; a module imports only from its own layer and those before it
# (tests/test_layers.py checks it): the online side (serving) builds on what the offline components produce.
LAYERS = ("models", "components", "serving", "pipeline", "cli")
