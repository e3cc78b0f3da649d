"""Served ScaNN retrieval model vs query tower + in-process ScaNN, for one request's top-100, interleaved.

    flock /tmp/towerflow-heavy.lock python benchmarks/retrieval_paths.py --run-dir runs/local

(a) the IndexBuilder's ScaNN retrieval SavedModel on the embedded model server
    (ScaNN ops registered): raw query features in, top-K ids out, one gRPC call;
(b) what the recommender does: the two-tower's query_tower over gRPC, then the
    pushed index searched in-process (serving/recommender/search.py).
Both get the same 300 synthetic query-feature rows, alternately, so they share
the machine's load. Prints p50/p99 per path.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from machine import cores, cpu_model  # noqa: E402

from towerflow.components.index.scann_index import ScannIndex  # noqa: E402
from towerflow.components.pusher import model_repository  # noqa: E402
from towerflow.models import features  # noqa: E402
from towerflow.serving.client import GrpcClient  # noqa: E402
from towerflow.serving.model_server import ModelServer, ServerOptions  # noqa: E402
from towerflow.serving.recommender.search import search_top_n  # noqa: E402
from towerflow.serving.recommender.served import ModelClient, columns, tensor_proto  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args(argv)
    from towerflow.pipeline import mlmd

    run = Path(args.run_dir).resolve()
    index_uri = Path(mlmd.latest_artifacts(str(run / "metadata.sqlite"))["IndexBuilder.index"])
    tmp = Path(tempfile.mkdtemp())
    shutil.copytree(index_uri / "scann", tmp / "scann" / "1")
    state = model_repository.model_state(run / "serving", "two_tower")
    version = state.default_version
    index = ScannIndex.load(str(model_repository.extras_dir(Path(state.base_path) / str(version)) / "index"))
    rng = np.random.default_rng(0)
    ids = index.ids.tolist()
    queries = [
        {features.USER_ID: str(u), features.USER_AGE: 30, features.USER_GENDER: "M", features.USER_OCCUPATION: "writer",
         features.USER_ZIP: "12345", features.HIST_ITEM_IDS: [ids[i] for i in rng.integers(0, len(ids), 20)],
         features.USER_PRIOR_COUNT: 20, features.USER_PRIOR_MEAN_RATING: 3.5, features.USER_DAYS_SINCE_FIRST: 30.0,
         features.CTX_HOUR: 12, features.CTX_DAY_OF_WEEK: 3}
        for u in range(args.queries)
    ]  # fmt: skip
    towers = ServerOptions(model_config_file=str(run / "serving" / "models.config"), port=0, rest_api_port=0)
    scann = ServerOptions(model_name="scann_retrieval", model_base_path=str(tmp / "scann"), port=0, rest_api_port=0,
                          custom_ops=["scann"])  # fmt: skip
    with ModelServer(towers) as tt, ModelServer(scann) as sc:
        served_client, client = GrpcClient(sc.grpc_target, timeout=10), ModelClient(tt.grpc_target)

        def served(q):
            inputs = {k: tensor_proto(v) for k, v in columns([q], features.QUERY_FEATURES).items()}
            return served_client.predict("scann_retrieval", inputs, signature_name="retrieve")

        def in_process(q):
            return search_top_n(index, client.query_embedding(q, version, 10.0), 100)

        for q in queries[:10]:
            served(q)
            in_process(q)
        times = {"served ScaNN retrieval model (one gRPC call)": [], "query_tower gRPC + in-process ScaNN": []}
        for q in queries:
            for values, fn in zip(times.values(), (served, in_process)):
                t0 = time.perf_counter()
                fn(q)
                values.append((time.perf_counter() - t0) * 1e3)
    print(f"{index.num_items:,} items; {cpu_model()}, {cores()} cores; load average {os.getloadavg()[0]:.1f}")
    for name, values in times.items():
        print(f"{name}: p50 {np.percentile(values, 50):.2f} ms, p99 {np.percentile(values, 99):.2f} ms")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
