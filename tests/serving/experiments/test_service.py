"""The experiments' wiring into the service, with stand-ins for the store and the base recommender."""

import numpy as np
import pytest

from towerflow.components.pusher import model_repository
from towerflow.models.features import Event
from towerflow.serving.experiments.config import from_dict
from towerflow.serving.experiments.event_log import read_lines
from towerflow.serving.experiments.service import LabelledVersionWatcher, attach, score_reference
from towerflow.serving.experiments.stats import ScoreReference
from towerflow.serving.recommender.config import ServiceConfig
from towerflow.serving.recommender.pit_cache import PointInTimeCache
from towerflow.serving.recommender.recommender import BadRequestError


class Store:
    feature_set_id = "fs-1"

    def __init__(self):
        self.recorded = []

    def user_events(self, user_id, before=None):
        return [Event(10, "a", 5.0)] if user_id == "warm" else []

    def popular_items(self, as_of, k, window_days=None, segment=None):
        return [("a", 9.0), ("b", 8.0), ("c", 7.0), ("d", 6.0)][:k]

    def items(self, ids):
        return [{"item_id": i, "item_title": i.upper()} for i in ids]

    def record_event(self, *args):
        self.recorded.append(args)
        return {"recorded": True}


class Base:
    """What attach needs of a Recommender: recommend, store, config, watcher (None: no model server here) and
    its point-in-time cache (variants share it)."""

    def __init__(self):
        self.store, self.config, self.watcher, self.metrics = Store(), ServiceConfig(), None, None
        self.point_in_time = PointInTimeCache(1.0)
        self.requests = []

    def recommend(self, body):
        if body.get("k", 10) > 50:
            raise BadRequestError("k too large")
        self.requests.append(body)
        return {
            "items": [{"item_id": "z", "score": 1.0}],
            "model_versions": {"two_tower": 1},
            "fallback": None,
            "request_id": "r1",
        }

    def ready(self):
        return {"ready": True}


def test_source_field_is_removed_and_popularity_drops_seen_and_excluded(tmp_path):
    base = Base()
    wired = attach(base, from_dict({}), tmp_path, log_dir=tmp_path / "logs", start=False)
    body = {"user_id": "warm", "k": 2, "exclude": ["b"], "source": "popularity"}
    response = wired.recommender.recommend(body)
    assert [i["item_id"] for i in response["items"]] == ["c", "d"] and response["user_state"] == "warm"
    assert response["items"][0]["title"] == "C" and response["model_versions"] == {"popularity": "fs-1"}
    assert body["source"] == "popularity"  # the caller's dict is not changed
    assert wired.recommender.recommend({"user_id": "u"})["model_versions"] == {"two_tower": 1}
    assert "source" not in base.requests[-1]
    with pytest.raises(BadRequestError, match="unknown source"):
        wired.recommender.recommend({"user_id": "u", "source": "canary"})  # no model server: no canary source
    with pytest.raises(BadRequestError, match="k too large"):
        wired.recommender.recommend({"user_id": "u", "k": 99})
    assert wired.recommender.ready() == {"ready": True}  # everything else is the base recommender's
    wired.close()


def test_events_reach_the_store_and_the_event_log(tmp_path):
    base = Base()
    config = from_dict(
        {
            "tests": [
                {
                    "name": "t",
                    "shadow": True,
                    "arms": [{"name": "control", "source": "stable"}, {"name": "treatment", "source": "popularity"}],
                }
            ]
        }
    )
    wired = attach(base, config, tmp_path, log_dir=tmp_path / "logs", start=False)
    assert wired.recommender.store.record_event("u1", "a", "click", None, 123, "e1") == {"recorded": True}
    assert base.store.recorded == [("u1", "a", "click", None, 123, "e1")]
    assert wired.recommender.store.feature_set_id == "fs-1"
    wired.close()
    [event] = read_lines(tmp_path / "logs" / "events.jsonl")
    assert (
        event["user_id"] == "u1" and event["event_id"] == "e1" and event["assignments"]["t"] in {"control", "treatment"}
    )


def test_labelled_watcher_follows_the_label(tmp_path, tiny_models):
    root = tmp_path / "serving"
    model_repository.push(root, "two_tower", tiny_models[1])
    model_repository.push(root, "two_tower", tiny_models[2], canary=True)
    stable = LabelledVersionWatcher(root, None, 0.25, label="stable")
    canary = LabelledVersionWatcher(root, None, 0.25, label="canary")
    assert stable._wanted("two_tower")[0] == 1 and canary._wanted("two_tower")[0] == 2
    assert canary._wanted("ranker") == (None, None)
    model_repository.rollback(root, "two_tower", to=1)
    assert canary._wanted("two_tower")[0] == 1  # no canary any more: the canary recommender mirrors stable


def test_score_reference_from_file_or_missing(tmp_path):
    reference = ScoreReference.from_scores(list(range(100)))
    path = tmp_path / "ref.json"
    path.write_text(__import__("json").dumps(reference.to_dict()))
    config = from_dict({"canary": {"score_reference": str(path)}})
    assert score_reference(config, tmp_path) == reference
    assert score_reference(from_dict({"canary": {}}), tmp_path) is None
    with pytest.raises(FileNotFoundError, match="score_reference"):
        score_reference(from_dict({"canary": {"score_reference": str(tmp_path / "nope.json")}}), tmp_path)


def test_score_reference_defaults_to_the_pushed_evaluations_distribution(tmp_path, tiny_models):
    import json

    offline = ScoreReference.from_scores(np.linspace(-2.0, 3.0, 480), source="offline evaluation: two_tower+dcn")
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(json.dumps({"rerank_weight": 0.25, "score_distribution": offline.to_dict()}))
    root = tmp_path / "serving"
    model_repository.push(root, "two_tower", tiny_models[1])
    model_repository.push(root, "ranker", tiny_models[1], extras={"evaluation.json": evaluation})
    assert score_reference(from_dict({"canary": {}}), root) == offline
    # a configured file wins over the pushed evaluation
    other = ScoreReference.from_scores(list(range(100)), source="abtest replay")
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(other.to_dict()))
    assert score_reference(from_dict({"canary": {"score_reference": str(path)}}), root) == other
    # a version pushed without one (an older evaluation): no reference, the PSI check is off
    model_repository.push(root, "ranker", tiny_models[1])
    assert score_reference(from_dict({"canary": {}}), root) is None


def test_variants_are_the_service_config_with_overrides(tmp_path):
    base = Base()
    config = from_dict({"variants": {"relevance-only": {"reranking": {"diversity_lambda": 1.0}}}})
    wired = attach(base, config, tmp_path, start=False)
    served_by = wired.router.sources["relevance-only"].__self__
    assert served_by.config.reranking.diversity_lambda == 1.0 and served_by.store is base.store
    assert served_by.config.reranking.novelty_weight == base.config.reranking.novelty_weight
    assert served_by.point_in_time is base.point_in_time  # the base's events invalidate the variant's reads too
    bad = from_dict({"variants": {"typo": {"reranking": {"diversity_lamda": 1.0}}}})
    with pytest.raises(ValueError, match="variants.typo"):
        attach(base, bad, tmp_path, start=False)
    with pytest.raises(ValueError, match="taken by a built-in"):
        from_dict({"variants": {"popularity": {}}})


def test_with_a_model_server_there_is_a_canary_source_that_waits_for_a_canary(tmp_path, tiny_models):
    root = tmp_path / "serving"
    model_repository.push(root, "two_tower", tiny_models[1])
    base = Base()
    base.watcher = LabelledVersionWatcher(root, None, 0.25, catalog=None, label="stable")
    wired = attach(base, from_dict({"canary": {"share": 0.5}}), root, start=False)
    assert wired.canary is not None and wired.canary.watcher.label == "canary"
    assert "canary" in wired.router.sources and wired.watcher is not None
    with pytest.raises(BadRequestError, match="no canary"):
        wired.recommender.recommend({"user_id": "1", "source": "canary"})
    assert all(wired.router.route(str(u))[0] == "stable" for u in range(50))  # nothing labelled canary yet
    wired.close()
