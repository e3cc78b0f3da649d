"""The serving root on disk: TF Serving's layout, `models.config`, push and rollback.

    <serving_root>/
      models.config            ModelServerConfig text proto (absolute base paths)
      models.docker.config     the same with base paths under /models (the official image's mount)
      <model_name>/<version>/  SavedModels; versions are increasing integers

Both real `tensorflow_model_server` and towerflow's embedded server read this.
Each model's config carries an explicit version policy (`specific`: the
versions to keep loaded) and the version labels `stable` (and `canary` while
one is being tried). TF Serving sends requests that name no version to the
highest *loaded* version, so a rollback narrows the policy to the target
version: the newer ones stay on disk but are unloaded.

Every change happens under a lock file and is atomic on disk: a version is
copied aside (`.incoming-*`, which TF Serving ignores) and renamed into place;
the config files are written aside and replaced.

A push can carry extras that belong to exactly that version -- the two-tower's
ScaNN index and item embeddings, the evaluation settings the recommender needs
(the re-ranking weight) -- under `<version>/assets.extra/towerflow/<name>`
(TF Serving ignores `assets.extra` except for warm-up requests). They land in
the same rename as the SavedModel, so a version directory never holds a model
with another version's index.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

CONFIG_FILE = "models.config"
DOCKER_CONFIG_FILE = "models.docker.config"
DOCKER_MODEL_ROOT = "/models"
STABLE = "stable"
CANARY = "canary"
_LOCK_FILE = ".towerflow-serving.lock"
_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
EXTRAS_DIR = os.path.join("assets.extra", "towerflow")


@dataclass(frozen=True)
class ModelState:
    """One model as the serving root describes it."""

    name: str
    base_path: str
    on_disk: list[int]  # version directories holding a SavedModel, ascending
    served: list[int]  # versions the policy keeps loaded, ascending
    labels: dict[str, int] = field(default_factory=dict)

    @property
    def default_version(self) -> int | None:
        """What a request naming no version gets (TF Serving: the highest loaded version)."""
        return max(self.served) if self.served else None

    def format(self) -> str:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(self.labels.items())) or "none"
        return (
            f"{self.name}: served versions {self.served} (default {self.default_version}), labels {labels}; "
            f"on disk {self.on_disk} in {self.base_path}"
        )


@dataclass(frozen=True)
class PushResult:
    model_name: str
    version: int
    path: str
    state: ModelState


def is_saved_model_dir(path: str | os.PathLike) -> bool:
    return any((Path(path) / name).is_file() for name in _SAVED_MODEL_FILES)


def versions_on_disk(base_path: str | os.PathLike) -> list[int]:
    """Integer-named subdirectories holding a SavedModel (what TF Serving's file system poller sees)."""
    base = Path(base_path)
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit() and is_saved_model_dir(p))


def read_config(config_path: str | os.PathLike) -> model_server_config_pb2.ModelServerConfig:
    """Parses a ModelServerConfig text proto; a missing file is an empty config."""
    config = model_server_config_pb2.ModelServerConfig()
    path = Path(config_path)
    if path.is_file():
        try:
            text_format.Parse(path.read_text(), config)
        except text_format.ParseError as err:
            raise ValueError(f"{path} is not a valid ModelServerConfig text proto: {err}") from err
    return config


def config_text(config: model_server_config_pb2.ModelServerConfig) -> str:
    return text_format.MessageToString(config)


def _model_config(
    config: model_server_config_pb2.ModelServerConfig, name: str
) -> model_server_config_pb2.ModelConfig | None:
    for model in config.model_config_list.config:
        if model.name == name:
            return model
    return None


def served_versions(model: model_server_config_pb2.ModelConfig, on_disk: list[int]) -> list[int]:
    """The versions `model`'s version policy selects among `on_disk` (TF Serving's semantics)."""
    policy = model.model_version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return list(on_disk)
    if kind == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in on_disk if v in wanted]
    count = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions > 0 else 1
    return list(on_disk[-count:])


def model_state(serving_root: str | os.PathLike, model_name: str) -> ModelState:
    """The model's versions, policy and labels; ValueError if the root knows no such model."""
    root = Path(serving_root)
    config = read_config(root / CONFIG_FILE)
    model = _model_config(config, model_name)
    base_path = model.base_path if model is not None else str((root / model_name).resolve())
    on_disk = versions_on_disk(base_path)
    if model is None and not on_disk:
        known = [m.name for m in config.model_config_list.config]
        raise ValueError(f"no model {model_name!r} in {root} (models: {', '.join(known) or 'none'})")
    if model is None:
        return ModelState(model_name, base_path, on_disk, on_disk[-1:], {})
    return ModelState(
        model_name, base_path, on_disk, served_versions(model, on_disk), dict(sorted(model.version_labels.items()))
    )


@contextlib.contextmanager
def _locked(serving_root: Path) -> Iterator[None]:
    serving_root.mkdir(parents=True, exist_ok=True)
    with open(serving_root / _LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_configs(serving_root: Path, config: model_server_config_pb2.ModelServerConfig) -> None:
    _write_atomic(serving_root / CONFIG_FILE, config_text(config))
    docker = model_server_config_pb2.ModelServerConfig()
    docker.CopyFrom(config)
    for model in docker.model_config_list.config:
        model.base_path = f"{DOCKER_MODEL_ROOT}/{model.name}"
    _write_atomic(serving_root / DOCKER_CONFIG_FILE, config_text(docker))


def _set_model(
    config: model_server_config_pb2.ModelServerConfig,
    name: str,
    base_path: str,
    served: list[int],
    labels: dict[str, int],
) -> None:
    model = _model_config(config, name)
    if model is None:
        model = config.model_config_list.config.add()
    model.Clear()
    model.name = name
    model.base_path = base_path
    model.model_platform = "tensorflow"
    model.model_version_policy.specific.versions.extend(sorted(set(served)))
    for key, value in sorted(labels.items()):
        model.version_labels[key] = value


def extras_dir(version_dir: str | os.PathLike) -> Path:
    """Where a pushed version keeps its extras (see the module docstring)."""
    return Path(version_dir) / EXTRAS_DIR


def _copy_version(source: Path, base: Path, version: int, extras: Mapping[str, str | os.PathLike] | None) -> Path:
    """Copies aside (with the extras), then renames: the poller never sees a half-written version."""
    base.mkdir(parents=True, exist_ok=True)
    staging = base / f".incoming-{version}-{uuid.uuid4().hex[:8]}"
    target = base / str(version)
    try:
        shutil.copytree(source, staging)
        for name, path in (extras or {}).items():
            dest = extras_dir(staging) / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if Path(path).is_dir():
                shutil.copytree(path, dest, dirs_exist_ok=True)
            else:
                shutil.copy2(path, dest)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _prune(base: Path, on_disk: list[int], keep: set[int], retain_on_disk: int) -> None:
    newest = set(on_disk[-retain_on_disk:]) if retain_on_disk > 0 else set(on_disk)
    for version in on_disk:
        if version not in keep and version not in newest:
            # renamed out of the poller's sight first, so deletion is never seen half-done
            doomed = base / f".deleting-{version}-{uuid.uuid4().hex[:8]}"
            os.rename(base / str(version), doomed)
            shutil.rmtree(doomed, ignore_errors=True)


def validate_model_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ValueError(f"model name {name!r} must be letters, digits, '-', '_' or '.' (and not start with '.')")
    return name


def push(
    serving_root: str | os.PathLike,
    model_name: str,
    saved_model_dir: str | os.PathLike,
    *,
    canary: bool = False,
    keep_versions: int = 2,
    retain_on_disk: int = 5,
    extras: Mapping[str, str | os.PathLike] | None = None,
) -> PushResult:
    """Copies a SavedModel in as the next version and updates `models.config`.

    `extras` (name -> file or directory) are copied into the version's
    `assets.extra/towerflow/<name>` in the same atomic step.

    A normal push labels the new version `stable` and keeps the previous stable
    one loaded too (`keep_versions`) so a rollback is instant. A canary push
    keeps `stable` where it is and labels the new version `canary`; note that
    TF Serving still sends unversioned requests to the highest loaded version,
    so canary traffic is split by clients that ask for a label.
    """
    validate_model_name(model_name)
    if keep_versions < 1:
        raise ValueError(f"keep_versions must be >= 1, got {keep_versions}")
    source = Path(saved_model_dir)
    if not is_saved_model_dir(source):
        raise FileNotFoundError(f"no SavedModel (saved_model.pb) in {source}")
    root = Path(serving_root).resolve()
    with _locked(root):
        config = read_config(root / CONFIG_FILE)
        existing = _model_config(config, model_name)
        base = Path(existing.base_path) if existing is not None else root / model_name
        on_disk = versions_on_disk(base)
        known = set(on_disk) | set(existing.model_version_policy.specific.versions if existing else [])
        version = max(known, default=0) + 1
        for name, path in (extras or {}).items():
            if not name or "/" in name or name.startswith(".") or not Path(path).exists():
                raise ValueError(f"bad push extra {name!r} -> {path} (need a plain name and an existing path)")
        _copy_version(source, base, version, extras)
        before = served_versions(existing, on_disk) if existing is not None else []
        labels = dict(existing.version_labels) if existing is not None else {}
        stable = labels.get(STABLE)
        if canary and stable is not None:
            labels = {STABLE: stable, CANARY: version}
        else:
            labels = {STABLE: version}
        served = set(labels.values())
        for older in sorted(set(before) | ({stable} if stable else set()), reverse=True):
            if len(served) >= keep_versions:
                break
            served.add(older)
        _set_model(config, model_name, str(base), sorted(served), labels)
        _write_configs(root, config)
        _prune(base, versions_on_disk(base), served, retain_on_disk)
    return PushResult(model_name, version, str(base / str(version)), model_state(root, model_name))


def rollback(serving_root: str | os.PathLike, model_name: str, to: int | None = None) -> ModelState:
    """Serves `to` (default: the newest version older than the current stable one) as the only version.

    Relabels it `stable`, drops `canary`, and narrows the policy to it so TF
    Serving unloads the newer versions; they stay on disk for a later
    roll-forward (`rollback --to <newer>`).
    """
    root = Path(serving_root).resolve()
    with _locked(root):
        state = model_state(root, model_name)
        if to is None:
            current = state.labels.get(STABLE, state.default_version)
            older = [v for v in state.on_disk if current is None or v < current]
            if not older:
                raise ValueError(f"{model_name} has no version older than {current} on disk to roll back to")
            to = older[-1]
        elif to not in state.on_disk:
            raise FileNotFoundError(f"{model_name} has no version {to} in {state.base_path} (on disk: {state.on_disk})")
        config = read_config(root / CONFIG_FILE)
        _set_model(config, model_name, state.base_path, [to], {STABLE: to})
        _write_configs(root, config)
    return model_state(root, model_name)


def promote(serving_root: str | os.PathLike, model_name: str) -> ModelState:
    """Makes the canary version the stable one (the previous stable stays loaded for rollback)."""
    root = Path(serving_root).resolve()
    with _locked(root):
        state = model_state(root, model_name)
        canary = state.labels.get(CANARY)
        if canary is None:
            raise ValueError(f"{model_name} has no canary version to promote (labels: {state.labels})")
        config = read_config(root / CONFIG_FILE)
        _set_model(config, model_name, state.base_path, sorted(set(state.served) | {canary}), {STABLE: canary})
        _write_configs(root, config)
    return model_state(root, model_name)


def list_models(serving_root: str | os.PathLike) -> list[ModelState]:
    root = Path(serving_root)
    return [model_state(root, m.name) for m in read_config(root / CONFIG_FILE).model_config_list.config]
