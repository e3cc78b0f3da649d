"""Tests for the synthetic interaction-log generator (small configs, fast)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest

from towerflow.pipeline import synthetic
from towerflow.pipeline.synthetic import GENRES, OCCUPATIONS, SynthConfig, build_world, generate

SMALL = SynthConfig(users=3_000, items=2_000, interactions=60_000, seed=7, chunk_size=7_000)


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _digest(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = generate(out, SMALL, progress=None)
    world = build_world(SMALL)
    _, inter = _read(out / "interactions.csv")
    users = np.array([int(r[0][1:]) for r in inter])
    items = np.array([int(r[1][1:]) for r in inter])
    ratings = np.array([int(r[2]) for r in inter])
    times = np.array([int(r[3]) for r in inter])
    return out, summary, world, users, items, ratings, times


def test_files_and_headers_exact(small):
    out, summary, *_ = small
    assert sorted(p.name for p in out.iterdir()) == ["interactions.csv", "items.csv", "users.csv"]
    first_lines = {p.name: p.read_bytes().split(b"\n", 1)[0] for p in out.iterdir()}
    assert first_lines == {
        "interactions.csv": b"user_id,item_id,rating,timestamp",
        "users.csv": b"user_id,age,gender,occupation,zip_code",
        "items.csv": b"item_id,title,release_year,genres",
    }
    assert summary.bytes_written == sum(p.stat().st_size for p in out.iterdir())
    assert summary.interactions == SMALL.interactions and summary.rows_per_second > 0


def test_counts_and_field_formats(small):
    out, _, world, users, items, ratings, times = small
    _, urows = _read(out / "users.csv")
    _, irows = _read(out / "items.csv")
    assert len(urows) == SMALL.users and len(irows) == SMALL.items and len(users) == SMALL.interactions
    assert [r[0] for r in urows] == [f"u{j}" for j in range(SMALL.users)]
    assert [r[0] for r in irows] == [f"i{j}" for j in range(SMALL.items)]
    for _uid, age, gender, occ, zip_code in urows:
        assert age.isdigit() and 5 <= int(age) <= 100
        assert gender in ("M", "F") and occ in OCCUPATIONS
        assert len(zip_code) == 5 and zip_code.isdigit()
    for _iid, title, year, genres in irows:
        assert title.endswith(f"({year})") and 1900 <= int(year) <= 2030
        assert genres and all(g in GENRES for g in genres.split("|"))
    # Some titles need quoting ("Name, The (1995)") and survive the round trip.
    assert any("," in r[1] for r in irows) and any('"' in r[1] for r in irows)
    assert set(np.unique(ratings)) == {1, 2, 3, 4, 5}
    assert ((SMALL.start_time <= times) & (times < SMALL.end_time)).all()
    # Raw interaction lines are plain "u<j>,i<k>,<r>,<ts>" (no quoting, no padding).
    line = (out / "interactions.csv").read_text().split("\n")[1]
    assert line == f"u{users[0]},i{items[0]},{ratings[0]},{times[0]}"


def test_rating_histogram_is_movielens_like(small):
    ratings = small[5]
    share = np.bincount(ratings, minlength=6)[1:] / ratings.size
    assert share.argmax() == 3  # 4 stars is the mode
    assert np.allclose(share, [0.06, 0.11, 0.27, 0.34, 0.21], atol=0.06)


def test_deterministic_per_seed(small, tmp_path):
    out = small[0]
    again = tmp_path / "again"
    generate(again, SMALL, progress=None)
    assert _digest(again) == _digest(out)
    other = tmp_path / "other"
    generate(other, SynthConfig(**{**SMALL.__dict__, "seed": 8}), progress=None)
    assert _digest(other)["interactions.csv"] != _digest(out)["interactions.csv"]
    assert _digest(other)["users.csv"] != _digest(out)["users.csv"]


def test_ids_reference_existing_users_and_items(small):
    _, _, world, users, items, *_ = small
    assert users.min() >= 0 and users.max() < SMALL.users
    assert items.min() >= 0 and items.max() < SMALL.items
    # interactions >= users: every user is active at least once.
    assert np.bincount(users, minlength=SMALL.users).min() >= 1
    assert (np.bincount(users, minlength=SMALL.users) == world.user_counts).all()


def test_no_interaction_before_arrival_or_release(small):
    _, _, world, users, items, _, times = small
    assert (times >= world.user_arrival[users]).all()
    assert (times >= world.item_release[items]).all()
    # Both happen over time, not all at the start.
    assert np.median(world.user_arrival) > SMALL.start_time + 30 * 86_400
    assert (world.item_release > SMALL.start_time).mean() > 0.5
    # Growth: more users arrive in the second half than in the first.
    mid = SMALL.start_time + SMALL.duration_days * 86_400 // 2
    assert (world.user_arrival >= mid).sum() > 1.5 * (world.user_arrival < mid).sum()


def test_popularity_and_activity_are_heavy_tailed(tmp_path):
    # Enough items that "top 1%" is a real head (200 items), not 20.
    cfg = SynthConfig(users=10_000, items=20_000, interactions=300_000, seed=1)
    generate(tmp_path, cfg, progress=None)
    _, inter = _read(tmp_path / "interactions.csv")
    users = np.array([int(r[0][1:]) for r in inter])
    items = np.array([int(r[1][1:]) for r in inter])
    per_item = np.sort(np.bincount(items, minlength=cfg.items))[::-1]
    top = per_item[: cfg.items // 100].sum() / per_item.sum()
    assert top > 0.10, f"top 1% of items get only {top:.1%} of interactions"
    per_user = np.bincount(users, minlength=cfg.users)
    assert per_user.max() > 20 * np.median(per_user)
    assert np.percentile(per_user, 99) > 5 * np.median(per_user)


def test_few_repeated_pairs(small):
    _, _, _, users, items, *_ = small
    keys = users * SMALL.items + items
    assert 1 - np.unique(keys).size / keys.size < 0.02


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_users_concentrate_on_few_genres_and_topics(small):
    out, _, world, users, items, *_ = small
    _, irows = _read(out / "items.csv")
    genre_index = {g: j for j, g in enumerate(GENRES)}
    item_genres = np.zeros((SMALL.items, len(GENRES)))
    for j, (_, _, _, genres) in enumerate(irows):
        for g in genres.split("|"):
            item_genres[j, genre_index[g]] = 1
    per_user = np.bincount(users, minlength=SMALL.users)
    active = np.flatnonzero(per_user >= 20)
    assert active.size > 200
    order = np.argsort(users, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(per_user)])
    user_genre_h, user_topic_h = [], []
    for u in active:
        its = items[order[bounds[u] : bounds[u + 1]]]
        user_genre_h.append(_entropy(item_genres[its].sum(axis=0)))
        user_topic_h.append(_entropy(np.bincount(world.item_topic[its], minlength=world.topics)))
    global_genre_h = _entropy(item_genres[items].sum(axis=0))
    global_topic_h = _entropy(np.bincount(world.item_topic[items], minlength=world.topics))
    assert np.mean(user_genre_h) < 0.8 * global_genre_h
    assert np.mean(user_topic_h) < 0.5 * global_topic_h


def test_ratings_reflect_affinity(small):
    _, _, world, users, items, ratings, _ = small
    share = world.user_topic_mix[users, world.item_topic[items]]
    assert ratings[share > 0.6].mean() > ratings[share < 0.1].mean() + 0.3


def test_demographics_predict_taste():
    world = build_world(SynthConfig(users=20_000, items=500, interactions=20_000, seed=3))
    mix = world.user_topic_mix.astype(np.float64)
    young = mix[world.user_age < 25].mean(axis=0)
    old = mix[world.user_age >= 50].mean(axis=0)
    # Total variation between the groups' average tastes, far above sampling noise.
    assert 0.5 * np.abs(young - old).sum() > 0.1


def test_tiny_configs(tmp_path):
    # Fewer items than topics, fewer interactions than users.
    cfg = SynthConfig(users=50, items=3, interactions=10, chunk_size=4)
    summary = generate(tmp_path, cfg, progress=None)
    assert summary.interactions == 10
    _, inter = _read(tmp_path / "interactions.csv")
    assert len(inter) == 10 and {r[1] for r in inter} <= {"i0", "i1", "i2"}


def test_progress_messages(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "_PROGRESS_SECONDS", 0.0)
    messages = []
    generate(
        tmp_path, SynthConfig(users=200, items=100, interactions=5_000, chunk_size=1_000), progress=messages.append
    )
    assert any("ETA" in m and "rows/s" in m for m in messages)
    assert "wrote 5,000 interactions" in messages[-1]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"users": 0}, "users must be >= 1"),
        ({"items": -5}, "items must be >= 1"),
        ({"interactions": 0}, "interactions must be >= 1"),
        ({"users": 2.5}, "users must be an integer"),
        ({"users": True}, "users must be an integer"),
        ({"chunk_size": 0}, "chunk_size must be >= 1"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"duration_days": 0}, "duration_days must be >= 1"),
        ({"topic_concentration": 0.0}, "topic_concentration must be > 0"),
        ({"popularity_exponent": float("nan")}, "popularity_exponent must be a finite number"),
        ({"catalog_at_start": 1.5}, "catalog_at_start must be <= 1"),
    ],
)
def test_invalid_config_raises_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SynthConfig(**kwargs)
