# The towerflow pipeline image: every Kubeflow / Vertex AI component runs in it,
# and it doubles as the Beam SDK container for Dataflow/Flink/Spark workers
# (pass --beam-arg=--sdk_container_image=<this image> to `towerflow compile`).
#
#   docker build -t gcr.io/<project>/towerflow:<tag> .
#   docker push gcr.io/<project>/towerflow:<tag>
#   towerflow compile --target kubeflow --image gcr.io/<project>/towerflow:<tag> ...
#
# The install mirrors the Makefile: tfx 1.16.0 declares Requires-Python <3.11
# although its whole dependency set ships cp311 wheels (docs/design.md, "Stack"),
# so pip gets --ignore-requires-python, and constraints.txt pins the resolved set.
ARG PYTHON_IMAGE=python:3.11-slim
ARG BEAM_SDK_IMAGE=apache/beam_python3.11_sdk:2.59.0

FROM ${BEAM_SDK_IMAGE} AS beam_sdk

FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /towerflow

# Dependencies first, so code edits do not redo the three-minute install.
COPY setup.py constraints.txt ./
RUN python -m pip install --upgrade "pip>=24" wheel "setuptools>=69,<75" \
 && mkdir -p towerflow pipeline components models serving cli \
 && touch towerflow/__init__.py pipeline/__init__.py components/__init__.py models/__init__.py serving/__init__.py cli/__init__.py \
 && python -m pip install --ignore-requires-python -c constraints.txt . \
 && python -m pip uninstall -y towerflow

# The code: installed as the towerflow package (run_fn / preprocessing_fn / component
# executors are imported by dotted path), with the repo kept at /towerflow so
# the checked-in schema is at /towerflow/schemas/schema.pbtxt
# (kubeflow_runner.IMAGE_SCHEMA_PATH).
COPY towerflow ./towerflow
COPY pipeline ./pipeline
COPY components ./components
COPY models ./models
COPY serving ./serving
COPY cli ./cli
COPY schemas ./schemas
RUN python -m pip install --ignore-requires-python --no-deps -c constraints.txt . \
 && python -c "import towerflow.components.ingestion.component, towerflow.models.run_fns, towerflow.pipeline.pipeline"

# Beam's worker boot program, so Dataflow/Flink/Spark can use this image as
# the SDK harness container. KFP ignores the entrypoint: the compiled spec
# sets the command (python -m tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor).
COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam
ENTRYPOINT ["/opt/apache/beam/boot"]
