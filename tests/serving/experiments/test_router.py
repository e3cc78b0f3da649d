"""ExperimentRouter: shadow mode never changes the served list; arms, canary split, logs and rotation."""

import threading
import time
import uuid

import pytest

from towerflow.serving.experiments import bucketing
from towerflow.serving.experiments.config import from_dict
from towerflow.serving.experiments.event_log import ExperimentLog, read_lines
from towerflow.serving.experiments.metrics import ExperimentMetrics
from towerflow.serving.experiments.router import ExperimentRouter, UnknownSourceError


def fake_source(name, offset, versions):
    def recommend(request):
        user = int(request["user_id"])
        items = [
            {"item_id": str((user * 7 + offset + i) % 1000), "score": 10.0 - i, "title": f"t{i}"}
            for i in range(request.get("k", 10))
        ]
        return {
            "items": items,
            "user_state": "warm",
            "model_versions": versions,
            "fallback": None,
            "timings_ms": {"total": 1.0},
            "request_id": uuid.uuid4().hex,
        }

    return recommend


ARMS = [{"name": "control", "source": "stable"}, {"name": "treatment", "source": "popularity"}]


def test_shadow_mode_never_changes_the_served_list(tmp_path):
    stable = fake_source("stable", 0, {"two_tower": 3, "ranker": 3})
    calls = []

    def meddling_treatment(request):
        calls.append(request["user_id"])
        request["k"] = 1  # a shadow that mutates what it is given must not reach the served request
        request.setdefault("exclude", []).append("0")
        time.sleep(0.002)
        return fake_source("t", 500, {"two_tower": 4, "ranker": 4})(request)

    config = from_dict({"tests": [{"name": "shadow-test", "shadow": True, "arms": ARMS}]})
    sink = ExperimentLog(tmp_path / "log")
    router = ExperimentRouter(config, {"stable": stable, "popularity": meddling_treatment}, sink, shadow_queue=1000)
    served = {}
    for user in range(300):
        request = {"user_id": str(user), "k": 10, "exclude": ["999"]}
        response = router.recommend(request)
        expected = stable({"user_id": str(user), "k": 10})
        assert [i["item_id"] for i in response["items"]] == [i["item_id"] for i in expected["items"]]
        assert response["model_versions"] == {"two_tower": 3, "ranker": 3}
        assert request == {"user_id": str(user), "k": 10, "exclude": ["999"]}
        served[response["request_id"]] = response
    router.drain()
    router.close()
    lines = read_lines(sink.impressions_path)
    shadow = [r for r in lines if not r["served"]]
    in_treatment = [u for u in range(300) if bucketing.assign(config.tests[0], str(u)).arm == "treatment"]
    assert sorted(int(u) for u in calls) == in_treatment and 100 < len(in_treatment) < 200
    assert sorted(int(r["user_id"]) for r in shadow) == in_treatment
    for record in shadow:
        assert record["source"] == "popularity" and record["model_versions"] == {"two_tower": 4, "ranker": 4}
        assert record["request_id"] in served  # joins to the served impression
        assert record["items"] != [i["item_id"] for i in served[record["request_id"]]["items"]]
    assert sum(r["served"] for r in lines) == 300


def test_slow_shadow_does_not_delay_the_response_and_a_full_queue_skips():
    release = threading.Event()

    def stuck(request):
        release.wait(60)
        return fake_source("t", 1, {})(request)

    config = from_dict({"tests": [{"name": "s", "shadow": True, "arms": [ARMS[0], {**ARMS[1], "weight": 1000}]}]})
    router = ExperimentRouter(config, {"stable": fake_source("s", 0, {}), "popularity": stuck}, shadow_queue=2)
    started = time.perf_counter()
    for user in range(20):
        router.recommend({"user_id": str(user), "k": 5})
    # one stuck shadow would hold a waiting request for 60 s; 20 requests in well under that never waited
    assert time.perf_counter() - started < 10.0
    assert router.shadow_skipped >= 15
    release.set()
    router.close()


def test_serving_experiment_routes_arms_and_logs_events(tmp_path):
    config = from_dict({"tests": [{"name": "ab", "holdout": 0.1, "arms": ARMS}]})
    sink = ExperimentLog(tmp_path)
    sources = {"stable": fake_source("s", 0, {"v": 1}), "popularity": fake_source("p", 5, {"v": 0})}
    metrics = ExperimentMetrics()
    router = ExperimentRouter(config, sources, sink, metrics=metrics)
    for user in range(200):
        router.recommend({"user_id": str(user), "k": 3})
        router.record_event(str(user), "7", "click", request_id="r")
    sink.close()
    for line in read_lines(sink.impressions_path):
        a = bucketing.assign(config.tests[0], line["user_id"])
        assert (line["experiment"], line["arm"], line["source"]) == ("ab", a.arm, a.source)
    events = read_lines(sink.events_path)
    assert len(events) == 200 and events[0]["assignments"]["ab"] in {"control", "treatment", "holdout"}
    lines = read_lines(sink.impressions_path)
    assert {line["arm"] for line in lines} == {"control", "treatment", "holdout"}
    treated = sum(line["arm"] == "treatment" for line in lines)
    sample = metrics.impressions.labels("ab", "treatment", "popularity", "true")._value.get()
    assert sample == treated


def test_canary_split_falls_back_to_stable_when_the_canary_fails_or_is_gone():
    def broken(request):
        raise RuntimeError("canary model server error")

    available = {"yes": True}
    config = from_dict({"canary": {"share": 0.5}})
    router = ExperimentRouter(
        config, {"stable": fake_source("s", 0, {"v": 1}), "canary": broken}, canary_available=lambda: available["yes"]
    )
    users = [str(u) for u in range(50)]
    canary_users = [u for u in users if bucketing.in_share("canary", u, 0.5)]
    assert canary_users
    for u in users:
        assert router.recommend({"user_id": u})["model_versions"] == {"v": 1}
    available["yes"] = False
    assert all(router.route(u)[0] == "stable" for u in canary_users)
    with pytest.raises(UnknownSourceError, match="no canary"):
        router.recommend({"user_id": "1"}, source="canary")
    with pytest.raises(UnknownSourceError):
        router.recommend({"user_id": "1"}, source="nope")


def test_unknown_source_in_config_is_refused():
    config = from_dict({"tests": [{"name": "x", "arms": [ARMS[0], {"name": "t", "source": "variant-b"}]}]})
    with pytest.raises(ValueError, match="variant-b"):
        ExperimentRouter(config, {"stable": fake_source("s", 0, {})})


def test_logs_rotate(tmp_path):
    from towerflow.serving.experiments.config import LogConfig

    sink = ExperimentLog(tmp_path, LogConfig(max_bytes=2000, backup_count=3))
    response = fake_source("s", 0, {"v": 1})({"user_id": "1", "k": 10})
    for i in range(40):
        sink.impression(
            request_id=str(i), user_id="1", experiment=None, arm=None, source="stable", served=True, response=response
        )
    sink.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [
        "events.jsonl",
        "impressions.jsonl",
        "impressions.jsonl.1",
        "impressions.jsonl.2",
        "impressions.jsonl.3",
    ]
    kept = [int(r["request_id"]) for r in read_lines(tmp_path / "impressions.jsonl")]
    assert kept == sorted(kept) and kept[-1] == 39 and len(kept) < 40


def test_the_canary_watcher_sees_each_answers_model_scores():
    class Recorder:
        def __init__(self):
            self.seen = []

        def observe(self, label, latency_ms, error, scores=()):
            self.seen.append((label, error, list(scores)))

        def stop(self):
            pass

    def scored(request):
        items = [
            {"item_id": "a", "score": 3.5, "stage_scores": {"final": 3.0}},
            {"item_id": "b", "score": 9.0, "stage_scores": {"final": 1.0}, "explored": True},
            {"item_id": "c", "score": 2.5, "stage_scores": {"final": 2.0}},
        ]
        return {"items": items, "model_versions": {}, "fallback": None, "request_id": "r"}

    def broken(request):
        raise RuntimeError("model server down")

    recorder = Recorder()
    config = from_dict({"canary": {"share": 0.5}})
    router = ExperimentRouter(config, {"stable": scored, "canary": broken}, watcher=recorder)
    for user in range(40):
        response = router.recommend({"user_id": str(user), "k": 3})
        assert [i["item_id"] for i in response["items"]] == ["a", "b", "c"]  # a failing canary: stable answers
    router.close()
    stable = [s for s in recorder.seen if s[0] == "stable"]
    canary = [s for s in recorder.seen if s[0] == "canary"]
    assert stable and canary  # both halves of the split were observed
    assert all(scores == [3.0, 2.0] and not error for _, error, scores in stable)
    assert all(error and scores == [] for _, error, scores in canary)
