"""Packaging for towerflow.

The top-level packages follow the TFX template layout (pipeline, components,
models, serving). Dependencies are pinned by constraints.txt; install with
`make setup`, which passes it as a constraints file.
"""

from setuptools import find_packages, setup

setup(
    name="towerflow",
    version="0.1.0",
    description="End-to-end TFX recommender pipeline: Beam ingestion, TFRS two-tower and DCN, ScaNN, TF Serving.",
    python_requires=">=3.10",
    packages=find_packages(
        include=["pipeline", "pipeline.*", "components", "components.*", "models", "models.*", "serving", "serving.*"]
    ),
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
    ],
    extras_require={"dev": ["pytest>=8", "ruff>=0.6", "nbclient", "ipykernel"]},
    entry_points={"console_scripts": ["towerflow=pipeline.cli:main"]},
)
