"""The experiments YAML: valid files load, every bad value gets a clear error."""

import pytest

from towerflow.serving.experiments import config

GOOD = """
retrieval: {top_n: 300}
experiments:
  log: {dir: /tmp/x, max_bytes: 1000, backup_count: 2}
  canary: {share: 0.2, window_seconds: 60, check_interval_seconds: 5, min_requests: 10, max_psi: 0.3}
  tests:
    - name: ranker-v4
      salt: r4
      holdout: 0.05
      arms:
        - {name: control, source: stable, weight: 1}
        - {name: treatment, source: popularity, weight: 1}
      shadow: true
"""


def test_loads_the_documented_shape(tmp_path):
    path = tmp_path / "service.yaml"
    path.write_text(GOOD)
    cfg = config.load(path)
    assert cfg.canary.share == 0.2 and cfg.canary.window_seconds == 60.0
    [test] = cfg.tests
    assert test.control.name == "control" and test.shadow and test.holdout == 0.05
    assert cfg.sources() == {"stable", "popularity", "canary"}
    assert cfg.log.max_bytes == 1000


def test_no_section_means_no_experiments(tmp_path):
    path = tmp_path / "service.yaml"
    path.write_text("retrieval: {top_n: 300}\n")
    cfg = config.load(path)
    assert cfg.tests == () and cfg.canary is None and cfg.serving_test is None


@pytest.mark.parametrize(
    "section, message",
    [
        ({"tests": [{"name": "a", "arms": [{"name": "c", "source": "stable"}]}]}, "at least two arms"),
        (
            {
                "tests": [
                    {
                        "name": "a",
                        "arms": [{"name": "c", "source": "stable", "weight": 0}, {"name": "t", "source": "canary"}],
                    }
                ]
            },
            "weight",
        ),
        (
            {
                "tests": [
                    {
                        "name": "a",
                        "holdout": 1.5,
                        "arms": [{"name": "c", "source": "stable"}, {"name": "t", "source": "canary"}],
                    }
                ]
            },
            "holdout",
        ),
        (
            {
                "tests": [
                    {"name": "a", "arms": [{"name": "holdout", "source": "stable"}, {"name": "t", "source": "canary"}]}
                ]
            },
            "reserved",
        ),
        ({"tests": [{"name": "a", "color": 1, "arms": []}]}, "unknown key"),
        ({"canary": {"share": 0.1, "window_seconds": 10, "check_interval_seconds": 20}}, "must not exceed"),
        ({"canary": {"max_psi": -1}}, "max_psi"),
        ({"canary": {"min_requests": 2.5}}, "whole number"),
        ({"log": {"backup_count": 0}}, "backup_count"),
        ({"surprise": 1}, "unknown key"),
    ],
)
def test_bad_values_are_clear_errors(section, message):
    with pytest.raises(ValueError, match=message):
        config.from_dict(section)


def test_experiments_must_not_share_a_salt_or_both_choose_the_model():
    arms = [{"name": "c", "source": "stable"}, {"name": "t", "source": "canary"}]
    with pytest.raises(ValueError, match="own salt"):
        config.from_dict(
            {
                "tests": [
                    {"name": "a", "salt": "x", "arms": arms},
                    {"name": "b", "salt": "x", "arms": arms, "shadow": True},
                ]
            }
        )
    with pytest.raises(ValueError, match="at most one"):
        config.from_dict({"tests": [{"name": "a", "arms": arms}, {"name": "b", "arms": arms}]})
    with pytest.raises(ValueError, match="both choose"):
        config.from_dict({"tests": [{"name": "a", "arms": arms}], "canary": {"share": 0.1}})
    # the watcher alone (share 0) goes with a serving experiment that has a canary arm
    assert config.from_dict({"tests": [{"name": "a", "arms": arms}], "canary": {"share": 0}}).serving_test.name == "a"


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("experiments: [unclosed\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        config.load(path)
