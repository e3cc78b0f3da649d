"""The Trainers' `distribution` section: config, TF_CONFIG roles, batch sizes, gradient accumulation, checkpoints.

Multi-process strategies (workers, parameter servers over 127.0.0.1) are exercised end to end in
tests/cli/test_train_commands.py; these tests run in one process.
"""

import json
import os
import types

import numpy as np
import pytest
import tensorflow as tf

from towerflow.models import distribution
from towerflow.models.distribution import ClusterRole, Distribution, DistributionConfig
from towerflow.models.ranking import DCNRankingModel, RankingConfig
from towerflow.models.two_tower import TwoTowerConfig, TwoTowerModel

VERTEX_CLUSTER = {
    "chief": ["cmle-training-workerpool0-1:2222"],
    "worker": ["cmle-training-workerpool1-1:2222", "cmle-training-workerpool1-2:2222"],
    "ps": ["cmle-training-workerpool2-1:2222", "cmle-training-workerpool2-2:2222"],
}


def _tf_config(cluster, task_type, index, **extra):
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}, **extra})


# --- config -------------------------------------------------------------------------------


def test_default_config_is_todays_single_process_training():
    config = DistributionConfig.from_custom_config({"two_tower": {"epochs": 1}})
    assert config == DistributionConfig()
    assert config.strategy == "none" and not config.distributed and not config.backup_enabled


def test_config_from_custom_config_and_backup_default():
    config = DistributionConfig.from_custom_config(
        {"distribution": {"strategy": "multi_worker_mirrored", "gradient_accumulation_steps": 4}}
    )
    assert config.gradient_accumulation_steps == 4
    assert config.backup_enabled  # distributed training backs up unless told not to
    assert not DistributionConfig(strategy="multi_worker_mirrored", backup=False).backup_enabled
    assert DistributionConfig(backup=True).backup_enabled


@pytest.mark.parametrize(
    "values, message",
    [
        ({"strategy": "horovod"}, "strategy must be one of"),
        ({"shard_policy": "rows"}, "shard_policy must be one of"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps must be an integer >= 1"),
        ({"keep_checkpoints": -1}, "keep_checkpoints must be an integer >= 0"),
        ({"steps_per_epoch": 2.5}, "steps_per_epoch must be an integer"),
        ({"backup": "yes"}, "backup must be one of"),
        ({"keep_checkpoint_every_hours": -1}, "keep_checkpoint_every_hours must be a number >= 0"),
        ({"ps_min_shard_bytes": 0}, "ps_min_shard_bytes must be an integer >= 1"),
    ],
)
def test_config_rejects_bad_values(values, message):
    with pytest.raises(ValueError, match=message):
        DistributionConfig(**values)


def test_config_rejects_unknown_fields():
    with pytest.raises(ValueError, match=r"unknown DistributionConfig fields .*\['workers'\]"):
        DistributionConfig.from_custom_config({"distribution": {"workers": 2}})


# --- TF_CONFIG ------------------------------------------------------------------------------


def test_no_tf_config_is_a_lone_chief():
    for text in (None, "", "{}", json.dumps({"cluster": {}})):
        role = ClusterRole.from_tf_config(text)
        assert not role.is_cluster and role.is_chief and role.num_ps == 0


def test_vertex_tf_config_roles():
    chief = ClusterRole.from_tf_config(_tf_config(VERTEX_CLUSTER, "chief", 0, environment="cloud"))
    worker = ClusterRole.from_tf_config(_tf_config(VERTEX_CLUSTER, "worker", 1))
    ps = ClusterRole.from_tf_config(_tf_config(VERTEX_CLUSTER, "ps", 1))
    assert chief.is_chief and not worker.is_chief and not ps.is_chief
    assert chief.num_ps == 2 and worker.name == "worker:1"


def test_worker_zero_is_chief_without_a_chief_task():
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    assert ClusterRole.from_tf_config(_tf_config(cluster, "worker", 0)).is_chief
    assert not ClusterRole.from_tf_config(_tf_config(cluster, "worker", 1)).is_chief


def test_legacy_master_is_the_chief_and_is_written_as_chief():
    cluster = {"master": ["h0:1"], "worker": ["h1:1"]}
    role = ClusterRole.from_tf_config(_tf_config(cluster, "master", 0))
    assert role.is_chief and role.task_type == "chief"
    assert json.loads(role.tf_config()) == {
        "cluster": {"chief": ["h0:1"], "worker": ["h1:1"]},
        "task": {"type": "chief", "index": 0},
    }


@pytest.mark.parametrize(
    "text, message",
    [
        ("not json", "TF_CONFIG is not JSON"),
        (_tf_config({"trainer": ["h:1"]}, "trainer", 0), "unknown cluster roles"),
        (_tf_config({"worker": ["h:1"]}, "ps", 0), "task type 'ps' is not in its cluster"),
        (_tf_config({"worker": ["h:1"]}, "worker", 3), "task index 3 is out of range"),
    ],
)
def test_bad_tf_config(text, message):
    with pytest.raises(ValueError, match=message):
        ClusterRole.from_tf_config(text)


def test_cluster_strategies_need_a_cluster(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for strategy in ("multi_worker_mirrored", "parameter_server"):
        with pytest.raises(ValueError, match="needs a cluster in TF_CONFIG"):
            distribution.start({"distribution": {"strategy": strategy}})


def test_start_without_a_section_uses_the_hardware_strategy():
    dist = distribution.start({})
    assert dist.strategy is tf.distribute.get_strategy()
    assert dist.is_chief and not dist.is_parameter_server


# --- batch sizes and outputs -------------------------------------------------------------------


def _dist(replicas: int, **config) -> Distribution:
    return Distribution(
        DistributionConfig(**config), ClusterRole(), types.SimpleNamespace(num_replicas_in_sync=replicas)
    )


def test_replicas_split_the_batch_and_micro_batches_add_to_it():
    # The same optimizer steps per epoch on 1 or N replicas: each replica takes batch_size / N.
    assert _dist(2, strategy="multi_worker_mirrored").global_batch_size(256) == 256
    assert _dist(2, strategy="multi_worker_mirrored", gradient_accumulation_steps=4).global_batch_size(256) == 1024
    assert _dist(1).global_batch_size(256) == 256
    # "none" does not split: the hardware strategy's replicas are not asked.
    assert _dist(3).global_batch_size(256) == 256


def test_a_batch_that_does_not_split_between_the_replicas_is_a_clear_error():
    with pytest.raises(ValueError, match="batch_size 255 does not split between 2 replicas"):
        _dist(2, strategy="multi_worker_mirrored").global_batch_size(255)
    with pytest.raises(ValueError, match="multiple of 4"):
        _dist(4, strategy="mirrored").scaled(TwoTowerConfig(batch_size=250))


@pytest.mark.parametrize(
    "rule, replicas, micro_batches, expected",
    [
        ("linear", 2, 1, 0.1),  # replicas split the batch: the step size is unchanged
        ("linear", 2, 4, 0.4),
        ("sqrt", 4, 4, 0.2),
        ("none", 2, 4, 0.1),
        ("linear", 1, 1, 0.1),
        ("none", 4, 1, 0.1),
    ],
)
def test_learning_rate_follows_the_examples_per_step(rule, replicas, micro_batches, expected):
    dist = _dist(
        replicas,
        strategy="multi_worker_mirrored",
        gradient_accumulation_steps=micro_batches,
        learning_rate_scaling=rule,
    )
    config = TwoTowerConfig(learning_rate=0.1, batch_size=256)
    scaled = dist.scaled(config)
    assert scaled.learning_rate == pytest.approx(expected)
    assert scaled.batch_size == 256 and config.learning_rate == 0.1  # the caller's config is untouched


def test_one_process_keeps_its_learning_rate_whatever_the_rule():
    config = TwoTowerConfig(learning_rate=0.1)
    assert _dist(2).scaled(config) is config  # strategy "none": batch_size is the global batch


def test_the_default_rule_leaves_the_learning_rate_alone():
    dist = _dist(2, strategy="multi_worker_mirrored", gradient_accumulation_steps=4)
    config = TwoTowerConfig(learning_rate=0.1)
    assert dist.scaled(config) is config


def test_unknown_learning_rate_rule_is_a_clear_error():
    with pytest.raises(ValueError, match="learning_rate_scaling"):
        DistributionConfig(learning_rate_scaling="cubic")


def test_non_chief_writes_to_a_scratch_dir_that_is_discarded(tmp_path):
    cluster = {"worker": ["h:1", "h:2"]}
    worker = Distribution(DistributionConfig(strategy="multi_worker_mirrored"), ClusterRole(cluster, "worker", 1), None)
    target = str(tmp_path / "model")
    written = worker.output_dir(target)
    assert written != target and os.path.isdir(written)
    worker.discard(target, written)
    assert not os.path.exists(written) and not os.path.exists(target)
    chief = Distribution(DistributionConfig(strategy="multi_worker_mirrored"), ClusterRole(cluster, "worker", 0), None)
    assert chief.output_dir(target) == target


# --- gradient accumulation ----------------------------------------------------------------------


def _ranker(table_sizes, seed=0):
    # Rating and liked losses only: both are means over examples, so a batch's gradient is the
    # row-weighted mean of its parts' gradients.
    tf.keras.utils.set_random_seed(seed)
    config = RankingConfig(interaction_weight=0.0, deep_layers=(16,), learning_rate=0.1, optimizer="adagrad")
    model = DCNRankingModel(config, table_sizes)
    model.compile()
    return model


def _one_step(model, batch):
    model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
    return [w.numpy() for w in model.weights]


def test_accumulated_micro_batches_give_the_update_of_one_big_batch(table_sizes, make_batch):
    micro_batches, micro_size = 4, 8
    batch = {k: tf.constant(v) for k, v in make_batch(micro_batches * micro_size, seed=3).items()}
    accumulating, reference, small = _ranker(table_sizes), _ranker(table_sizes), _ranker(table_sizes)
    for model in (accumulating, reference, small):
        model.compute_loss(batch)  # builds the variables
    initial = [w.numpy() for w in reference.weights]
    for model in (accumulating, small):
        model.set_weights(initial)
    distribution.enable_gradient_accumulation(accumulating, micro_batches)

    accumulated = _one_step(accumulating, batch)
    whole = _one_step(reference, batch)
    only_first_part = _one_step(small, {k: v[::micro_batches] for k, v in batch.items()})

    assert accumulating.optimizer.iterations.numpy() == reference.optimizer.iterations.numpy() == 1
    changed = [not np.allclose(a, b) for a, b in zip(whole, initial)]
    assert sum(changed) > len(changed) // 2  # the step moved most weights, embeddings included
    for got, want in zip(accumulated, whole):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # One micro-batch alone gives a different step: the test would notice a non-accumulating step.
    assert any(not np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(only_first_part, whole))


def test_accumulation_handles_a_batch_smaller_than_the_micro_batch_count(table_sizes, make_batch):
    model = _ranker(table_sizes)
    batch = {k: tf.constant(v) for k, v in make_batch(3, seed=1).items()}
    distribution.enable_gradient_accumulation(model, 4)  # one part is empty
    weights = _one_step(model, batch)
    assert all(np.isfinite(w).all() for w in weights)


def test_two_tower_trains_with_accumulation(table_sizes, make_dataset):
    model = TwoTowerModel(TwoTowerConfig(recency_half_life_days=0, embedding_dim=8, mlp_layers=(8,)), table_sizes)
    model.compile()
    distribution.enable_gradient_accumulation(model, 2)
    history = model.fit(make_dataset(64, 16), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert model.optimizer.iterations.numpy() == 4  # 4 batches of 16, one optimizer step each


# --- checkpoints -----------------------------------------------------------------------------


def _fit_with(dist, model_run_dir, table_sizes, make_dataset, epochs=1):
    model = TwoTowerModel(TwoTowerConfig(recency_half_life_days=0, embedding_dim=8, mlp_layers=(8,)), table_sizes)
    model.compile()
    callbacks = distribution.checkpoint_callbacks(dist, str(model_run_dir), "two_tower")
    model.fit(make_dataset(96, 16), epochs=epochs, callbacks=callbacks, verbose=0)
    return model, callbacks


def test_keeps_the_last_k_checkpoints(tmp_path, table_sizes, make_dataset):
    dist = Distribution(
        DistributionConfig(keep_checkpoints=2, checkpoint_every_steps=2), ClusterRole(), tf.distribute.get_strategy()
    )
    model, _ = _fit_with(dist, tmp_path, table_sizes, make_dataset)
    state = tf.train.get_checkpoint_state(str(tmp_path / distribution.CHECKPOINT_DIR))
    kept = [os.path.basename(p) for p in state.all_model_checkpoint_paths]
    assert kept == ["ckpt-4", "ckpt-6"]  # saved at steps 2, 4, 6; the oldest is gone
    assert not (tmp_path / distribution.BACKUP_DIR).exists()  # "none" does not back up unless asked


def test_backup_and_restore_resumes_the_step_counter(tmp_path, table_sizes, make_dataset):
    dist = Distribution(
        DistributionConfig(backup=True, backup_every_steps=2), ClusterRole(), tf.distribute.get_strategy()
    )

    class Interrupt(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.model.optimizer.iterations.numpy() == 5:
                raise RuntimeError("interrupted")

    model = TwoTowerModel(TwoTowerConfig(recency_half_life_days=0, embedding_dim=8, mlp_layers=(8,)), table_sizes)
    model.compile()
    callbacks = distribution.checkpoint_callbacks(dist, str(tmp_path), "two_tower") + [Interrupt()]
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(make_dataset(96, 16), epochs=2, callbacks=callbacks, verbose=0)

    resumed, callbacks = _fit_with(dist, tmp_path, table_sizes, make_dataset, epochs=2)
    report = next(c for c in callbacks if isinstance(c, distribution.ResumeReport))
    assert report.initial_step == 4  # the last backup before the interruption
    assert resumed.optimizer.iterations.numpy() == 12  # 2 epochs x 6 steps: continued, not restarted


def test_non_chief_waits_for_the_chiefs_export(tmp_path):
    cluster = {"worker": ["h:1", "h:2"]}
    config = DistributionConfig(strategy="multi_worker_mirrored")
    worker = Distribution(config, ClusterRole(cluster, "worker", 1), None)
    with pytest.raises(RuntimeError, match="the chief wrote no model"):
        worker.await_chief_export(str(tmp_path), timeout_seconds=0.1)
    (tmp_path / "saved_model.pb").write_bytes(b"")
    worker.await_chief_export(str(tmp_path), timeout_seconds=0.1)
    Distribution(config, ClusterRole(cluster, "worker", 0), None).await_chief_export(str(tmp_path / "none"), 0.1)


def test_steps_per_epoch_reads_on_across_passes(table_sizes, make_dataset):
    dist = Distribution(
        DistributionConfig(steps_per_epoch=4, validation_steps=1), ClusterRole(), tf.distribute.get_strategy()
    )
    inputs = distribution.fit_inputs(
        dist, lambda batch: make_dataset(96, batch), lambda batch: make_dataset(32, batch), 16
    )
    model = TwoTowerModel(TwoTowerConfig(recency_half_life_days=0, embedding_dim=8, mlp_layers=(8,)), table_sizes)
    model.compile()
    model.fit(epochs=2, verbose=0, **inputs)
    assert model.optimizer.iterations.numpy() == 8  # 6 batches per pass: the second epoch wrapped around


def test_multi_worker_runs_log_the_global_metrics_once():
    # Keras sums a multi-worker step's outputs over the workers, metrics included ("auto"); with "first"
    # the global metrics are logged as they are (`towerflow train --cluster local:2w` on ml-100k: mean_loss
    # 5.19 on both workers, as one process logs it, instead of 10.3)
    def dist(strategy, replicas):
        return types.SimpleNamespace(config=types.SimpleNamespace(strategy=strategy), replicas=replicas)

    for strategy, replicas, expected in (
        ("multi_worker_mirrored", 2, "first"),
        ("multi_worker_mirrored", 1, "auto"),
        ("mirrored", 2, "auto"),
        ("none", 1, "auto"),
    ):
        model = tf.keras.Sequential([tf.keras.layers.Dense(1)])
        distribution.report_global_metrics(model, dist(strategy, replicas))
        assert model.distribute_reduction_method == expected, strategy
