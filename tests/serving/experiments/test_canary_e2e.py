"""The canary watcher in the live service on ml-100k: a shuffled canary is rolled back, a good one is left alone.

Own serving root (the run's trained models as v1) and a copy of the run's MLMD,
the service's canary split at 50%, and as live traffic the held-out test
window's users replayed as of the test cut-off. The score reference is the one
pushed with the models: the ModelEvaluator's `score_distribution` (the served
pair's first 10 scores on each test user's list), which the service reads from
the stable version's evaluation.json. (Against a different population the
reference would not hold: all 943 users' lists score PSI 0.74 against the test
users', as warm and cold users score differently.)

The bad canary is the stable two-tower with the coordinates of its query
embedding shuffled: same index, same ranker, but every item's retrieval score
is scrambled.
"""

import random
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from towerflow.components.pusher import model_repository

WINDOW = 60.0
CANARY_SALT = "canary"  # CanaryConfig's default
CANARY = {
    "share": 0.5,
    "window_seconds": WINDOW,
    "check_interval_seconds": 5,
    "min_requests": 100,  # PSI of 100 test-user lists from the SAME model stays under 0.25 (measured p99 0.17 at 80)
    "max_psi": 0.25,
    "max_p99_ratio": 5.0,
    "max_error_rate_increase": 0.05,
}


def shuffled_two_tower(version_dir: Path, out: Path, seed: int = 0) -> Path:
    """The SavedModel at version_dir with its query_tower's embedding coordinates permuted."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(version_dir))
    query = loaded.signatures["query_tower"]
    dim = query.structured_outputs["embedding"].shape[-1]
    perm = tf.constant(np.random.default_rng(seed).permutation(dim), dtype=tf.int32)
    specs = query.structured_input_signature[1]

    class Shuffled(tf.Module):
        def __init__(self):
            super().__init__()
            self.inner = loaded

        @tf.function(input_signature=[specs])
        def query_tower(self, features):
            outputs = dict(query(**features))
            outputs["embedding"] = tf.gather(outputs["embedding"], perm, axis=1)
            return outputs

    module = Shuffled()
    signatures = {name: fn for name, fn in loaded.signatures.items() if name != "query_tower"}
    signatures["query_tower"] = module.query_tower.get_concrete_function()
    tf.saved_model.save(module, str(out), signatures=signatures)
    return out


class Traffic:
    """One client thread replaying the test window's users (shuffled, round and round) as of the cut-off."""

    def __init__(self, url: str, users, as_of: int):
        self.url, self.users, self.as_of = url, list(users), as_of
        self.sent, self.failed = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        users = list(self.users)
        random.Random(0).shuffle(users)
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                for user in users:
                    if self._stop.is_set():
                        break
                    body = {"user_id": user, "k": 10, "explore": False, "context": {"timestamp": self.as_of}}
                    response = client.post(f"{self.url}/v1/recommend", json=body)
                    self.sent += 1
                    self.failed += response.status_code != 200

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(15)


def _version_dir(root: Path, model: str, version: int) -> Path:
    return Path(model_repository.model_state(root, model).base_path) / str(version)


def _wait(predicate, timeout: float, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@pytest.mark.e2e
def test_canary_rollback_in_the_live_service(pipeline_run, tmp_path):
    from tests.serving.experiments.live_service import live_service, prepare_run
    from towerflow.cli.abtest_commands import load_protocol
    from towerflow.serving.experiments.canary import read_rollbacks
    from towerflow.serving.experiments.event_log import read_lines
    from towerflow.serving.experiments.stats import model_scores

    config, _, _ = pipeline_run
    run_dir, root = prepare_run(config, tmp_path)
    metadata = str(run_dir / "metadata.sqlite")
    eval_set, _, as_of = load_protocol(str(run_dir))
    with live_service(run_dir, root, tmp_path / "svc", {"canary": CANARY}, metadata_path=metadata) as service:
        watcher = service.experiments.watcher
        assert watcher.reference is not None and watcher.reference.source.startswith("offline evaluation")
        scores = []
        with httpx.Client(timeout=10) as client:
            for user in eval_set.user_ids:
                body = {"user_id": user, "k": 10, "explore": False, "context": {"timestamp": as_of}, "source": "stable"}
                scores += model_scores(client.post(f"{service.url}/v1/recommend", json=body).json()["items"])
        stable_psi = watcher.reference.psi(scores)  # the served stable models' replay against their own evaluation

        with Traffic(service.url, eval_set.user_ids, as_of) as traffic:
            # a good canary: the stable models pushed again as canary (v2)
            for model in ("two_tower", "ranker"):
                model_repository.push(root, model, _version_dir(root, model, 1), canary=True)
            assert _wait(lambda: _routed_to_canary(service), 60)
            timeline = []  # (seconds, routed to canary?, requests sent): shown if the verdict is not the expected one
            started = time.monotonic()
            while time.monotonic() - started < WINDOW + 5:
                time.sleep(1)
                timeline.append(
                    (
                        round(time.monotonic() - started),
                        _routed_to_canary(service),
                        traffic.sent,
                        _canary_state(service),
                    )
                )
            verdict = watcher.last_verdict
            assert verdict.enough_data and not verdict.reasons and not watcher.rollbacks, (
                verdict,
                timeline,
                watcher.rollbacks,
            )
            assert verdict.psi < CANARY["max_psi"] and verdict.canary.requests >= CANARY["min_requests"]
            assert watcher.rollbacks == []
            assert model_repository.model_state(root, "two_tower").labels == {"stable": 1, "canary": 2}
            good_psi = verdict.psi
            # done with it: the good canary goes the way an operator would take it off (rollback to stable)
            for model in ("two_tower", "ranker"):
                model_repository.rollback(root, model, to=1)

            bad = shuffled_two_tower(_version_dir(root, "two_tower", 1), tmp_path / "shuffled")
            model_repository.push(root, "two_tower", bad, canary=True, extras=_extras(root, 1))
            model_repository.push(root, "ranker", _version_dir(root, "ranker", 1), canary=True)
            pushed_at = time.monotonic()
            assert _wait(lambda: bool(watcher.rollbacks), WINDOW + 10), watcher.last_verdict
            took = time.monotonic() - pushed_at
            assert traffic.failed == 0
        [record] = watcher.rollbacks
    assert took <= WINDOW, f"rolled back {took:.1f}s after the push; window {WINDOW}s"
    assert record["canary_versions"] == {"two_tower": 3, "ranker": 3} and "PSI" in record["reasons"][0]
    for model in ("two_tower", "ranker"):
        state = model_repository.model_state(root, model)
        assert state.labels == {"stable": 1} and state.served == [1] and 3 in state.on_disk
    [stored] = read_rollbacks(metadata)
    assert stored["canary_versions"] == {"two_tower": 3, "ranker": 3} and "PSI" in stored["reason"]
    served_bad = [
        r for r in read_lines(service.log_dir / "impressions.jsonl") if r["model_versions"].get("two_tower") == 3
    ]
    assert served_bad and {r["source"] for r in served_bad} == {"canary"}
    print(
        f"stable replay PSI {stable_psi:.3f} vs the offline reference; good canary PSI {good_psi:.3f}; "
        f"bad canary PSI {record['verdict']['psi']:.3f}, rolled back after {took:.1f}s"
    )


def _routed_to_canary(service) -> bool:
    return service.experiments.router.route(_canary_user())[0] == "canary"


def _canary_state(service):
    current = service.experiments.canary.watcher.current
    labels = model_repository.model_state(service.serving_root, "two_tower").labels
    return labels, current and current.versions, service.experiments.canary.watcher.last_error


def _canary_user() -> str:
    from towerflow.serving.experiments import bucketing

    return next(str(u) for u in range(1, 944) if bucketing.in_share(CANARY_SALT, str(u), CANARY["share"]))


def _extras(root: Path, version: int) -> dict:
    extras = model_repository.extras_dir(_version_dir(root, "two_tower", version))
    return {p.name: str(p) for p in extras.iterdir()}
