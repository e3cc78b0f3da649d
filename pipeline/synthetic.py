"""Synthetic interaction logs in the towerflow normalized format, at any scale.

The generator exists so the pipeline can be exercised (and benchmarked) far
beyond MovieLens-100K without shipping data. It is built to have the shape of a
real product log, because a uniform-random log would make every model look
equally useless and hide bugs in temporal splitting and history features:

* K latent topics. Every item belongs to one topic; its genres are drawn from
  that topic's genre profile and its title words from a topic vocabulary, so
  the side features carry signal too.
* Users have a sparse Dirichlet topic mixture whose prior depends on their
  age, gender and occupation, so demographics predict taste.
* Each interaction picks a topic from the user's mixture, then an item of that
  topic with Zipf-like popularity (``weight = rank ** -popularity_exponent``).
* Users arrive over time with exponential growth; a user's activity is
  heavy-tailed (log-normal) and happens after arrival, mostly soon after it.
* Items are released over time and are only sampled once released: per topic,
  items are sorted by release time and the sampler restricts itself to the
  released prefix with one ``searchsorted`` per interaction.
* Ratings are ``affinity(user, item) + user bias + item bias + noise``, cut at
  quantiles so the 1..5 histogram resembles MovieLens.

Output (``generate``) is a directory with three UTF-8 CSV files (csv-module
QUOTE_MINIMAL rules, one header line each)::

    interactions.csv  user_id,item_id,rating,timestamp
    users.csv         user_id,age,gender,occupation,zip_code
    items.csv         item_id,title,release_year,genres      (genres "A|B")

Ids are ``u<index>`` / ``i<index>`` with 0-based indices into the arrays of
``SynthWorld``, which ``build_world`` recreates from the config alone (tests
and evaluation use it as ground truth: arrival and release times, topics).

Interactions are written in chunks, grouped by user (not in time order), and
formatted to bytes with vectorized numpy, so memory is bounded by the
per-user/per-item arrays plus one chunk, independent of the number of rows.
Output is byte-identical for an identical config (``chunk_size`` included).
"""

from __future__ import annotations

import csv
import datetime as _dt
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from towerflow.components.ingestion.readers import ML100K_GENRES, TOWERFLOW_COLUMNS, TOWERFLOW_FILES

# The towerflow format, as its reader defines it.
INTERACTIONS_FILE = TOWERFLOW_FILES["interactions"]
USERS_FILE = TOWERFLOW_FILES["users"]
ITEMS_FILE = TOWERFLOW_FILES["items"]
INTERACTION_COLUMNS = TOWERFLOW_COLUMNS["interactions"]
USER_COLUMNS = TOWERFLOW_COLUMNS["users"]
ITEM_COLUMNS = TOWERFLOW_COLUMNS["items"]

# MovieLens genre names, without ml-100k's "unknown" placeholder.
GENRES = ML100K_GENRES[1:]
OCCUPATIONS = (
    "administrator",
    "artist",
    "doctor",
    "educator",
    "engineer",
    "entertainment",
    "executive",
    "healthcare",
    "homemaker",
    "lawyer",
    "librarian",
    "marketing",
    "none",
    "other",
    "programmer",
    "retired",
    "salesman",
    "scientist",
    "student",
    "technician",
    "writer",
)
# Rough MovieLens-100K occupation shares; "student" and "retired" are then
# re-weighted by age so occupation is consistent with age.
_OCCUPATION_BASE = np.array([79, 28, 7, 95, 67, 18, 32, 16, 7, 12, 51, 26, 9, 105, 66, 14, 12, 31, 196, 27, 45], float)
_STUDENT = OCCUPATIONS.index("student")
_RETIRED = OCCUPATIONS.index("retired")
_AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])  # MovieLens-1M age buckets

# Cumulative share of ratings <= 1, 2, 3, 4 in MovieLens-100K (6/11/27/34/21 %).
_RATING_CUM_SHARE = np.array([0.06, 0.17, 0.44, 0.78])

_ADJECTIVES = (
    "Silent Last Dark Little Great Lost Broken Golden Wild Secret Red Endless Hidden Final Lonely Crimson "
    "Frozen Burning Quiet Savage Bright Hollow Sweet Distant Electric Midnight Stolen Perfect Bitter Eternal"
).split()
_NOUNS = (
    "River Night City Heart Road Storm Garden Mirror Shadow Kingdom Summer Island Promise Machine Letter "
    "Empire Journey Witness Stranger Harbor Winter Dream Frontier Signal Ghost Dance Orchard Legacy Planet "
    "Detective Horizon Vow Station Outlaw Melody Voyage Circus Tower Fortune Desert"
).split()
_PROGRESS_SECONDS = 5.0
_PILOT_ROWS = 50_000
_DEDUP_MODES = ("popular", "uniform", "uniform", "uniform", "explore", "explore")


@dataclass
class SynthConfig:
    """Size, shape and seed of a synthetic log; validated on construction."""

    users: int = 10_000
    items: int = 5_000
    interactions: int = 500_000
    seed: int = 0
    topics: int = 20
    latent_dim: int = 16
    start_time: int = 1_546_300_800  # 2019-01-01T00:00:00Z
    duration_days: int = 730
    chunk_size: int = 1_000_000
    popularity_exponent: float = 0.9
    # Dirichlet concentration of a user's topic mixture: ~1 means most users
    # have 1-3 dominant topics; larger values blur tastes towards the prior.
    topic_concentration: float = 1.0
    # Log-normal sigma of per-user activity; 1.2 gives a few users with
    # hundreds of times the median activity, as in real logs.
    activity_sigma: float = 1.2
    # Ratio of the user arrival rate at the end of the period to the start.
    user_growth: float = 5.0
    # Fraction of the catalog already available at start_time (back catalog).
    catalog_at_start: float = 0.3
    rating_noise: float = 0.7

    def __post_init__(self) -> None:
        for name in ("users", "items", "interactions", "topics", "latent_dim", "duration_days", "chunk_size"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("seed", self.seed, minimum=0)
        _check_int("start_time", self.start_time, minimum=0)
        for name, lo, lo_open in (
            ("popularity_exponent", 0.0, False),
            ("topic_concentration", 0.0, True),
            ("activity_sigma", 0.0, False),
            ("user_growth", 0.0, True),
            ("rating_noise", 0.0, False),
            ("catalog_at_start", 0.0, False),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"SynthConfig.{name} must be a finite number, got {value!r}")
            if value < lo or (lo_open and value == lo):
                op = ">" if lo_open else ">="
                raise ValueError(f"SynthConfig.{name} must be {op} {lo}, got {value!r}")
        if self.catalog_at_start > 1:
            raise ValueError(f"SynthConfig.catalog_at_start must be <= 1, got {self.catalog_at_start!r}")

    @property
    def end_time(self) -> int:
        """First second after the simulated period (exclusive upper bound of timestamps)."""
        return self.start_time + self.duration_days * 86_400


def _check_int(name: str, value: object, minimum: int) -> None:
    # bool is an int subclass; SynthConfig(users=True) is a bug, not 1 user.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"SynthConfig.{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"SynthConfig.{name} must be >= {minimum}, got {value!r}")


@dataclass
class SynthSummary:
    path: Path
    users: int
    items: int
    interactions: int
    seconds: float
    rows_per_second: float
    bytes_written: int


@dataclass
class SynthWorld:
    """The latent state behind a synthetic log; index j is ``u<j>`` / ``i<j>``."""

    config: SynthConfig
    user_arrival: np.ndarray  # int64 unix s; a user's interactions are >= this
    user_counts: np.ndarray  # int64 interactions per user (sums to config.interactions)
    user_topic_mix: np.ndarray  # float32 (users, topics), rows sum to 1
    user_age: np.ndarray
    user_gender: np.ndarray  # 0 = M, 1 = F
    user_occupation: np.ndarray  # index into OCCUPATIONS
    user_zip: np.ndarray
    item_release: np.ndarray  # int64 unix s; an item's interactions are >= this
    item_topic: np.ndarray  # int32
    item_popularity: np.ndarray  # float64 sampling weight within its topic
    item_genre_mask: np.ndarray  # int32 bit g set <=> GENRES[g]
    item_release_year: np.ndarray
    item_title: list
    # Sampler/rating internals.
    _user_topic_cum: np.ndarray
    _user_vec: np.ndarray
    _user_bias: np.ndarray
    _item_vec: np.ndarray
    _item_bias: np.ndarray
    _released_end: np.ndarray  # (topics, days): sorted position after the items released by that day
    _sorted_item: np.ndarray  # item index at each sorted position
    _cum_weight: np.ndarray  # len items + 1, cumulative popularity in sorted order
    _topic_start: np.ndarray  # first sorted position of each topic
    _affinity_mean: float = 0.0
    _affinity_std: float = 1.0
    _rating_cuts: np.ndarray | None = None

    @property
    def topics(self) -> int:
        return self.user_topic_mix.shape[1]


def _rng(seed: int, *path: int) -> np.random.Generator:
    # Separate streams per purpose (and per chunk) keep each part reproducible
    # on its own, e.g. adding a user attribute does not shift item sampling.
    return np.random.default_rng(np.random.SeedSequence([seed, *path]))


def _log_dirichlet_rows(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Gamma(a) with a << 1 underflows to 0 in float64, which would make whole
    # rows 0/0. Sampling log Gamma(a) = log Gamma(a+1) + log(U)/a is exact and
    # cannot underflow; a softmax of those logs is a Dirichlet draw.
    log_g = np.log(rng.gamma(alpha + 1.0)) + np.log(rng.random(alpha.shape)) / alpha
    log_g -= log_g.max(axis=1, keepdims=True)
    out = np.exp(log_g)
    out /= out.sum(axis=1, keepdims=True)
    return out


def build_world(config: SynthConfig) -> SynthWorld:
    """Recreate the latent users, items and sampler of ``config`` (deterministic)."""
    c = config
    n_u, n_i = c.users, c.items
    # More topics than items would leave empty topics that users could prefer
    # but never sample from.
    k = min(c.topics, n_i)
    d = c.latent_dim
    span = c.duration_days * 86_400
    n_g = len(GENRES)

    # --- topics: latent centroid, genre profile, title vocabulary ---------
    rng = _rng(c.seed, 0)
    centroid = rng.standard_normal((k, d))
    centroid /= np.linalg.norm(centroid, axis=1, keepdims=True)
    primary_genre = rng.permutation(np.resize(np.arange(n_g), max(k, n_g)))[:k]
    secondary = rng.dirichlet(np.full(n_g, 0.3), size=k)
    secondary_cum = np.cumsum(secondary, axis=1)
    topic_share = rng.dirichlet(np.full(k, 2.0))

    # --- items ------------------------------------------------------------
    rng = _rng(c.seed, 1)
    # The first k (shuffled) items cover every topic and are back catalog, so
    # every topic always has a released item to sample.
    item_topic = np.empty(n_i, np.int32)
    item_topic[:k] = np.arange(k)
    item_topic[k:] = rng.choice(k, size=n_i - k, p=topic_share)
    perm = rng.permutation(n_i)
    item_topic = item_topic[perm]
    anchor = np.zeros(n_i, bool)
    anchor[perm < k] = True

    rank = rng.permutation(n_i) + 1
    popularity = rank.astype(np.float64) ** -c.popularity_exponent

    back_catalog = anchor | (rng.random(n_i) < c.catalog_at_start)
    # Releases happen at the start of a (simulated) day, so "released by time
    # t" is a (topic, day) table lookup instead of a per-row binary search.
    release_day = np.where(back_catalog, 0, rng.integers(0, c.duration_days, size=n_i, dtype=np.int64))
    item_release = c.start_time + release_day * 86_400
    start_year = _dt.datetime.fromtimestamp(c.start_time, _dt.UTC).year
    old_year = np.maximum(1920, start_year - np.floor(rng.gamma(1.5, 8.0, size=n_i)).astype(np.int64))
    new_year = item_release.astype("datetime64[s]").astype("datetime64[Y]").astype(np.int64) + 1970
    item_release_year = np.where(back_catalog, old_year, new_year)

    n_extra = rng.choice(3, size=n_i, p=[0.45, 0.4, 0.15])
    mask = (1 << primary_genre[item_topic]).astype(np.int32)
    for j in range(2):
        u = rng.random(n_i)
        g = (secondary_cum[item_topic] < u[:, None]).sum(axis=1).clip(max=n_g - 1)
        mask |= np.where(n_extra > j, 1 << g, 0).astype(np.int32)

    item_vec = (centroid[item_topic] + rng.standard_normal((n_i, d)) * (0.6 / math.sqrt(d))).astype(np.float32)
    log_pop = np.log(popularity)
    # Popular items are rated a bit higher (the reason they are popular).
    item_bias = 0.3 * (log_pop - log_pop.mean()) / (log_pop.std() + 1e-9) + 0.4 * rng.standard_normal(n_i)
    item_title = _titles(rng, item_topic, item_release_year)

    order = np.lexsort((item_release, item_topic))
    sorted_key = item_topic[order].astype(np.int64) * c.duration_days + release_day[order]
    released_end = np.searchsorted(sorted_key, np.arange(k * c.duration_days), side="right").reshape(k, -1)
    cum_weight = np.concatenate([[0.0], np.cumsum(popularity[order])])
    topic_start = np.searchsorted(item_topic[order], np.arange(k))

    # --- users: demographics, then tastes conditioned on them -------------
    rng = _rng(c.seed, 2)
    age = np.clip(np.round(14 + rng.gamma(3.0, 6.5, size=n_u)), 7, 80).astype(np.int64)
    gender = (rng.random(n_u) < 0.3).astype(np.int8)
    age_bucket = np.searchsorted(_AGE_EDGES, age, side="right")
    occupation = np.empty(n_u, np.int64)
    for b in range(len(_AGE_EDGES) + 1):
        sel = np.flatnonzero(age_bucket == b)
        p = _OCCUPATION_BASE.copy()
        p[_STUDENT] *= (4.0, 2.5, 0.3, 0.05, 0.02, 0.01, 0.01)[b]
        p[_RETIRED] *= (0.0, 0.0, 0.01, 0.1, 0.5, 3.0, 12.0)[b]
        occupation[sel] = rng.choice(len(OCCUPATIONS), size=sel.size, p=p / p.sum())
    zip_code = rng.integers(0, 100_000, size=n_u)

    prior_logit = (
        rng.standard_normal((len(_AGE_EDGES) + 1, k))[age_bucket]
        + rng.standard_normal((2, k))[gender]
        + 0.7 * rng.standard_normal((len(OCCUPATIONS), k))[occupation]
        + np.log(topic_share)[None, :]
    )
    prior = np.exp(prior_logit - prior_logit.max(axis=1, keepdims=True))
    prior /= prior.sum(axis=1, keepdims=True)
    mix = _log_dirichlet_rows(c.topic_concentration * prior, rng).astype(np.float32)
    del prior, prior_logit
    topic_cum = np.cumsum(mix, axis=1, dtype=np.float32)
    user_vec = (mix @ centroid.astype(np.float32) + rng.standard_normal((n_u, d)).astype(np.float32) * 0.3).astype(
        np.float32
    )
    user_bias = 0.5 * rng.standard_normal(n_u)

    # Arrival density grows as exp(lam * x) over the period (x in [0, 1)).
    lam = math.log(c.user_growth)
    x = rng.random(n_u)
    frac = x if abs(lam) < 1e-9 else np.log1p(x * math.expm1(lam)) / lam
    arrival = c.start_time + np.minimum(np.floor(frac * span), span - 1).astype(np.int64)
    # Late arrivals have less time to be active, so fewer interactions.
    remaining = (c.end_time - arrival) / span
    weight = rng.lognormal(0.0, c.activity_sigma, size=n_u) * (0.05 + remaining)
    if c.interactions >= n_u:
        counts = 1 + rng.multinomial(c.interactions - n_u, weight / weight.sum())
    else:
        counts = rng.multinomial(c.interactions, weight / weight.sum())

    world = SynthWorld(
        config=c,
        user_arrival=arrival,
        user_counts=counts.astype(np.int64),
        user_topic_mix=mix,
        user_age=age,
        user_gender=gender,
        user_occupation=occupation,
        user_zip=zip_code,
        item_release=item_release,
        item_topic=item_topic,
        item_popularity=popularity,
        item_genre_mask=mask,
        item_release_year=item_release_year,
        item_title=item_title,
        _user_topic_cum=topic_cum,
        _user_vec=user_vec,
        _user_bias=user_bias,
        _item_vec=item_vec,
        _item_bias=item_bias,
        _released_end=released_end,
        _sorted_item=order,
        _cum_weight=cum_weight,
        _topic_start=topic_start,
    )
    _calibrate_ratings(world)
    return world


def _titles(rng: np.random.Generator, topic: np.ndarray, year: np.ndarray) -> list:
    n = topic.size
    adj = rng.integers(0, len(_ADJECTIVES), size=n)
    # Nouns come from an 8-word window per topic so title tokens carry topic signal.
    noun = (topic.astype(np.int64) * 5 + rng.integers(0, 8, size=n)) % len(_NOUNS)
    noun2 = rng.integers(0, len(_NOUNS), size=n)
    style = rng.choice(4, size=n, p=[0.45, 0.25, 0.2, 0.1])
    sequel = rng.random(n) < 0.05
    out = []
    for a, b, b2, s, q, y in zip(
        adj.tolist(), noun.tolist(), noun2.tolist(), style.tolist(), sequel.tolist(), year.tolist()
    ):
        part2 = " 2" if q else ""
        if s == 0:
            t = f"{_ADJECTIVES[a]} {_NOUNS[b]}{part2}"
        elif s == 1:
            # MovieLens moves the article to the end, which needs CSV quoting.
            t = f"{_ADJECTIVES[a]} {_NOUNS[b]}{part2}, The"
        elif s == 2:
            t = f"{_NOUNS[b]} of the {_NOUNS[b2]}{part2}"
        else:
            t = f'"{_ADJECTIVES[a]}" {_NOUNS[b]}{part2}'
        out.append(f"{t} ({y})")
    return out


def _sample_items(
    world: SynthWorld, users: np.ndarray, times: np.ndarray, rng: np.random.Generator, mode: str = "popular"
) -> np.ndarray:
    """Topic from the user's mixture, then a released item of it by popularity.

    mode "uniform": uniform among the topic's released items; "explore": also
    a uniformly random topic.
    """
    k = world.topics
    if mode == "explore":
        topic = rng.integers(0, k, size=users.size)
    else:
        cum = world._user_topic_cum[users]
        topic = (cum < rng.random(users.size, dtype=np.float32)[:, None]).sum(axis=1)
        np.minimum(topic, k - 1, out=topic)  # float32 cumsum may end just below 1
    c = world.config
    end = world._released_end[topic, (times - c.start_time) // 86_400]
    start = world._topic_start[topic]
    if mode != "popular":
        pos = start + np.floor(rng.random(users.size) * (end - start)).astype(np.int64)
    else:
        lo = world._cum_weight[start]
        hi = world._cum_weight[end]
        pos = np.searchsorted(world._cum_weight, lo + rng.random(users.size) * (hi - lo), side="right") - 1
    np.clip(pos, start, end - 1, out=pos)
    return world._sorted_item[pos]


def _sample_times(world: SynthWorld, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    arrival = world.user_arrival[users]
    # Beta(1, 2) offset into the user's remaining time: activity is highest
    # right after sign-up and decays, as in real retention curves.
    f = 1.0 - np.sqrt(rng.random(users.size))
    return arrival + np.floor(f * (world.config.end_time - arrival)).astype(np.int64)


def _raw_scores(world: SynthWorld, users: np.ndarray, items: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    aff = np.einsum("ij,ij->i", world._user_vec[users], world._item_vec[items], dtype=np.float32)
    aff = (aff - world._affinity_mean) / world._affinity_std
    noise = rng.standard_normal(users.size) * world.config.rating_noise
    return aff + world._user_bias[users] + world._item_bias[items] + noise


def _calibrate_ratings(world: SynthWorld) -> None:
    # Score scale depends on latent_dim, topics, concentration...; measuring a
    # pilot sample of real (user, item) draws and cutting at its quantiles
    # gives a MovieLens-like rating histogram for any config.
    rng = _rng(world.config.seed, 3)
    # Whole users (not single rows) so the pilot goes through the same
    # de-duplication as the real log: moving repeats off the popular head
    # shifts ratings down noticeably for heavy users.
    pick = rng.permutation(world.config.users)
    take = int(np.searchsorted(np.cumsum(world.user_counts[pick]), _PILOT_ROWS)) + 1
    users = np.repeat(pick[:take], world.user_counts[pick[:take]])
    times = _sample_times(world, users, rng)
    items = _sample_items(world, users, times, rng)
    _dedup(world, users, times, items, rng)
    aff = np.einsum("ij,ij->i", world._user_vec[users], world._item_vec[items])
    world._affinity_mean = float(aff.mean())
    world._affinity_std = float(aff.std()) or 1.0
    world._rating_cuts = np.quantile(_raw_scores(world, users, items, rng), _RATING_CUM_SHARE)


def _dedup(world: SynthWorld, users: np.ndarray, times: np.ndarray, items: np.ndarray, rng) -> None:
    """Resample repeated (user, item) pairs in place, best effort.

    Real rating logs hold one rating per pair. A chunk holds whole users, so
    checking within the chunk is enough. Heavy users exhaust the popular head
    of their topics, so after the first round repeats are redrawn uniformly
    from the released items of a topic: the user moves into the long tail;
    the last rounds explore any topic. A user with more interactions than
    released items keeps some repeats.
    """
    n_items = world.config.items
    rows = np.arange(users.size)
    for round_ in range(len(_DEDUP_MODES)):
        key = users[rows] * n_items + items[rows]
        order = np.argsort(key, kind="stable")
        sk = key[order]
        dup = rows[order[1:][sk[1:] == sk[:-1]]]
        if dup.size == 0:
            return
        items[dup] = _sample_items(world, users[dup], times[dup], rng, mode=_DEDUP_MODES[round_])
        rows = np.flatnonzero(np.isin(users, np.unique(users[dup])))


def _format_rows(parts: list, n: int) -> bytes:
    """CSV bytes for n rows from literal byte strings and non-negative int arrays.

    About 10x faster than pandas.to_csv: every field is laid out in a fixed
    width uint8 matrix (digits via divmod), leading zeros are masked out and
    the kept bytes are read row-major in one boolean gather.
    """
    layout = []
    width = 0
    for p in parts:
        if isinstance(p, bytes):
            layout.append((p, len(p), None))
            width += len(p)
        else:
            top = int(p.max()) if n else 0
            layout.append((p, len(str(top)), np.uint32 if top < 2**32 else np.uint64))
            width += layout[-1][1]
    mat = np.empty((n, width), np.uint8)
    keep = np.ones((n, width), bool)
    col = 0
    for p, w, dtype in layout:
        if isinstance(p, bytes):
            mat[:, col : col + w] = np.frombuffer(p, np.uint8)
        else:
            x = p.astype(dtype)
            for j in range(w - 1, -1, -1):
                x, digit = np.divmod(x, 10)
                mat[:, col + j] = digit
                if j < w - 1:
                    keep[:, col + j] = p >= 10 ** (w - 1 - j)
            mat[:, col : col + w] += 48
        col += w
    return mat[keep].tobytes()


def _chunk_bounds(counts: np.ndarray, chunk_size: int) -> list[tuple[int, int]]:
    """Split users into consecutive runs of ~chunk_size interactions (whole users)."""
    cum = np.cumsum(counts)
    bounds = []
    lo = 0
    done = 0
    while lo < counts.size:
        hi = int(np.searchsorted(cum, done + chunk_size, side="right"))
        hi = max(hi, lo + 1)  # a single user bigger than a chunk gets its own chunk
        bounds.append((lo, hi))
        done = int(cum[hi - 1])
        lo = hi
    return bounds


def _interaction_chunk(world: SynthWorld, lo: int, hi: int, chunk_index: int) -> tuple[bytes, int]:
    rng = _rng(world.config.seed, 4, chunk_index)
    users = np.repeat(np.arange(lo, hi, dtype=np.int64), world.user_counts[lo:hi])
    if users.size == 0:
        return b"", 0
    times = _sample_times(world, users, rng)
    items = _sample_items(world, users, times, rng)
    _dedup(world, users, times, items, rng)
    rating = 1 + np.searchsorted(world._rating_cuts, _raw_scores(world, users, items, rng))
    return _format_rows([b"u", users, b",i", items, b",", rating, b",", times, b"\n"], users.size), users.size


def _write_users(path: Path, world: SynthWorld) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        w.writerow(USER_COLUMNS)
        gender = np.array(["M", "F"])[world.user_gender].tolist()
        occ = np.array(OCCUPATIONS)[world.user_occupation].tolist()
        zips = [f"{z:05d}" for z in world.user_zip.tolist()]
        w.writerows(zip((f"u{j}" for j in range(world.config.users)), world.user_age.tolist(), gender, occ, zips))


def _write_items(path: Path, world: SynthWorld) -> None:
    masks, inverse = np.unique(world.item_genre_mask, return_inverse=True)
    names = np.array(["|".join(GENRES[g] for g in range(len(GENRES)) if m >> g & 1) for m in masks.tolist()])
    genres = names[inverse].tolist()
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        w.writerow(ITEM_COLUMNS)
        w.writerows(
            zip(
                (f"i{j}" for j in range(world.config.items)), world.item_title, world.item_release_year.tolist(), genres
            )
        )


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def generate(
    out_dir: str | os.PathLike,
    config: SynthConfig,
    progress: Callable[[str], None] | None = print,
) -> SynthSummary:
    """Write interactions.csv, users.csv and items.csv for ``config`` into ``out_dir``.

    Files are written under a ``.partial`` suffix and renamed when complete,
    so an interrupted run never leaves a plausible-looking truncated file.
    ``progress`` receives a line at most every few seconds (None: silent).
    """
    say = progress or (lambda _msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    world = build_world(config)
    say(
        f"synthetic: world built in {time.perf_counter() - t0:.1f}s "
        f"({config.users:,} users, {config.items:,} items, {world.topics} topics)"
    )

    finals = [out / USERS_FILE, out / ITEMS_FILE, out / INTERACTIONS_FILE]
    partial = {p: p.with_name(p.name + ".partial") for p in finals}
    _write_users(partial[finals[0]], world)
    _write_items(partial[finals[1]], world)

    total = config.interactions
    written = 0
    t_rows = time.perf_counter()
    last_report = t_rows
    # One writer thread overlaps disk writes (which release the GIL) with
    # building the next chunk; at most one write is in flight so memory stays
    # at ~two chunks.
    with open(partial[finals[2]], "wb") as f, ThreadPoolExecutor(max_workers=1) as pool:
        f.write((",".join(INTERACTION_COLUMNS) + "\n").encode())
        pending: Future | None = None
        for index, (lo, hi) in enumerate(_chunk_bounds(world.user_counts, config.chunk_size)):
            data, rows = _interaction_chunk(world, lo, hi, index)
            if pending is not None:
                pending.result()
            pending = pool.submit(f.write, data)
            written += rows
            now = time.perf_counter()
            if now - last_report >= _PROGRESS_SECONDS and written < total:
                rate = written / (now - t_rows)
                say(
                    f"synthetic: {written:,}/{total:,} rows ({100 * written / total:.1f}%), "
                    f"{rate:,.0f} rows/s, ETA {_fmt_duration((total - written) / rate)}"
                )
                last_report = now
        if pending is not None:
            pending.result()
    if written != total:  # the chunking is exact by construction; guard anyway
        raise RuntimeError(f"synthetic: wrote {written} interactions, expected {total}")

    for p in finals:
        os.replace(partial[p], p)
    seconds = time.perf_counter() - t0
    nbytes = sum(p.stat().st_size for p in finals)
    summary = SynthSummary(
        path=out,
        users=config.users,
        items=config.items,
        interactions=written,
        seconds=seconds,
        rows_per_second=written / seconds if seconds > 0 else float("inf"),
        bytes_written=nbytes,
    )
    say(
        f"synthetic: wrote {written:,} interactions in {_fmt_duration(seconds)} "
        f"({summary.rows_per_second:,.0f} rows/s, {nbytes / 1e6:,.1f} MB) to {out}"
    )
    return summary
