"""The canary watcher on a real serving root and MLMD store, with simulated traffic on a simulated clock.

Toy two-stage recommender: retrieval picks the top 10 of user . item, and the
served score of an item is the ranker's view of the true affinity. The bad
canary retrieves with its item scores shuffled (a permuted item table), so the
ranker scores what it picked far lower; a good canary is the stable model plus
a little noise.
"""

import numpy as np
import pytest

from towerflow.components.pusher import model_repository
from towerflow.serving.experiments import bucketing
from towerflow.serving.experiments.canary import CanaryWatcher, read_rollbacks
from towerflow.serving.experiments.config import CanaryConfig, from_dict
from towerflow.serving.experiments.router import ExperimentRouter
from towerflow.serving.experiments.stats import ScoreReference

ITEMS, DIM = 2000, 16
rng = np.random.default_rng(7)
ITEM_VECTORS = rng.normal(size=(ITEMS, DIM))


def user_vector(user_id: str) -> np.ndarray:
    return np.random.default_rng(int(user_id)).normal(size=DIM)


def recommender(item_vectors, versions, latency=None):
    def recommend(request):
        u = user_vector(request["user_id"])
        top = np.argsort(-(item_vectors @ u))[:10]
        true = ITEM_VECTORS[top] @ u
        return {
            "items": [
                {"item_id": str(i), "score": float(s), "stage_scores": {"final": float(s)}} for i, s in zip(top, true)
            ],
            "fallback": None,
            "model_versions": versions,
            "request_id": request["user_id"],
        }

    return recommend


@pytest.fixture
def serving_root(tmp_path, tiny_models):
    root = tmp_path / "serving"
    for model in ("two_tower", "ranker"):
        model_repository.push(root, model, tiny_models[1])
        model_repository.push(root, model, tiny_models[2], canary=True)
        assert model_repository.model_state(root, model).labels == {"stable": 1, "canary": 2}
    return root


def offline_reference() -> ScoreReference:
    # the "offline evaluation": the stable model's served scores for users that never hit the live service
    stable = recommender(ITEM_VECTORS, {})
    scores = [i["score"] for u in range(100_000, 100_300) for i in stable({"user_id": str(u)})["items"]]
    return ScoreReference.from_scores(scores, source="offline evaluation")


def run_traffic(watcher, router, clock, seconds, rate=10.0):
    """`rate` requests per simulated second, a watcher check every check_interval; returns rollback time or None."""
    start, user, next_check = clock["now"], 0, clock["now"] + watcher.config.check_interval_seconds
    while clock["now"] - start < seconds:
        router.recommend({"user_id": str(user)})
        user += 1
        clock["now"] += 1.0 / rate
        if clock["now"] >= next_check:
            next_check += watcher.config.check_interval_seconds
            if watcher.check().rollback:
                return clock["now"] - start
    return None


def _setup(serving_root, tmp_path, canary_vectors):
    cfg = from_dict(
        {
            "canary": {
                "share": 0.3,
                "window_seconds": 60,
                "check_interval_seconds": 5,
                "min_requests": 30,
                "max_psi": 0.25,
                "max_p99_ratio": 1000,
            }
        }
    )
    clock = {"now": 0.0}
    metadata = str(tmp_path / "metadata.sqlite")
    watcher = CanaryWatcher(cfg.canary, serving_root, offline_reference(), metadata, clock=lambda: clock["now"])
    sources = {
        "stable": recommender(ITEM_VECTORS, {"two_tower": 1}),
        "canary": recommender(canary_vectors, {"two_tower": 2}),
    }
    router = ExperimentRouter(cfg, sources, watcher=watcher, canary_available=lambda: bool(watcher.canary_versions()))
    return watcher, router, clock, metadata


def test_bad_canary_is_rolled_back_within_the_window_and_recorded(serving_root, tmp_path):
    shuffled = ITEM_VECTORS[np.random.default_rng(3).permutation(ITEMS)]
    watcher, router, clock, metadata = _setup(serving_root, tmp_path, shuffled)
    after = run_traffic(watcher, router, clock, seconds=600)
    assert after is not None and after <= watcher.config.window_seconds, after
    for model in ("two_tower", "ranker"):
        state = model_repository.model_state(serving_root, model)
        assert state.labels == {"stable": 1} and state.served == [1] and state.on_disk == [1, 2]
    [record] = watcher.rollbacks
    assert "PSI" in record["reasons"][0] and record["verdict"]["psi"] > 0.25
    assert record["verdict"]["stable_psi"] < 0.1
    [stored] = read_rollbacks(metadata)
    assert stored["canary_versions"] == {"two_tower": 2, "ranker": 2}
    assert stored["stable_versions"] == {"two_tower": 1, "ranker": 1} and "PSI" in stored["reason"]
    # after the rollback every user is served stable again
    canary_user = next(u for u in range(1000) if bucketing.in_share("canary", str(u), 0.3))
    assert router.route(str(canary_user))[0] == "stable"


def test_good_canary_is_left_alone(serving_root, tmp_path):
    noisy = ITEM_VECTORS + np.random.default_rng(4).normal(scale=0.05, size=ITEM_VECTORS.shape)
    watcher, router, clock, metadata = _setup(serving_root, tmp_path, noisy)
    assert run_traffic(watcher, router, clock, seconds=180) is None
    verdict = watcher.last_verdict
    assert verdict.enough_data and verdict.psi < 0.1 and not verdict.reasons
    assert model_repository.model_state(serving_root, "two_tower").labels == {"stable": 1, "canary": 2}
    assert read_rollbacks(metadata) == []


def test_error_rate_and_latency_thresholds(serving_root):
    cfg = CanaryConfig(share=0.5, window_seconds=30, check_interval_seconds=5, min_requests=20)
    clock = {"now": 0.0}
    watcher = CanaryWatcher(cfg, serving_root, None, None, clock=lambda: clock["now"])
    for i in range(40):
        watcher.observe("stable", 10.0, False)
        watcher.observe("canary", 50.0 if i % 2 else 10.0, i % 10 == 0)
        clock["now"] += 0.5
    verdict = watcher.check()
    assert verdict.error_rate_increase == pytest.approx(0.1)
    assert any("error rate" in r for r in verdict.reasons) and any("p99" in r for r in verdict.reasons)
    assert model_repository.model_state(serving_root, "ranker").labels == {"stable": 1}
    clock["now"] += 100  # the window forgets: no data, no verdict
    assert not watcher.check().enough_data
