"""`towerflow abtest`: an A/B test replayed on the held-out test window, through the live service.

    towerflow features materialize --run-dir runs/local --as-of test-cutoff      # the state the protocol assumes
    towerflow abtest --service http://127.0.0.1:8080 --run-dir runs/local --control popularity --treatment stable
    towerflow abtest --service http://127.0.0.1:8080 --run-dir runs/local --control stable --aa

Every test user of the run's evaluation protocol (users with an interaction in
the test window) is bucketed into control or treatment with the experiments'
salted hash, and asks the service for a list as of the test cut-off
(`context.timestamp`, `explore: false`, `k` = 100, `"source": <arm>`). Each
list is scored against the user's test-window items: HR@10, NDCG@10 and
Recall@100 per arm, the treatment - control difference with a 95% CI and a
p-value (two-proportion z-test for the hit rate, bootstrap for NDCG and
recall). `--aa` serves the control to both halves: a check that the set-up
finds no difference where there is none.

Arms: `popularity`, `stable`, `canary` (the service's sources), or a pipeline
run directory, whose latest trained two-tower + ranker are scored in this
process with the offline evaluator's code (same users, same cut-off) since the
live service serves only its own versions.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

SERVICE_ARMS = ("popularity", "stable", "canary")
KS = (10, 100)


@dataclass
class ArmResult:
    name: str
    users: list[str]
    lists: list[list[str]]
    fallbacks: int = 0
    model_versions: dict | None = None
    served_by: str = "service"
    top_scores: list[float] = field(default_factory=list)  # model scores of each list's first 10 items


def _parse_arm(value: str) -> str:
    if value in SERVICE_ARMS:
        return value
    path = Path(value)
    if (path / "metadata.sqlite").is_file():
        return str(path.resolve())
    raise ValueError(f"an arm is one of {', '.join(SERVICE_ARMS)} or a pipeline run directory; got {value!r}")


def load_protocol(run_dir: str):
    """(EvalSet of the run's test window, OfflineData, the as-of second the store is materialized at)."""
    from towerflow.components.evaluation.offline import OfflineData
    from towerflow.pipeline import mlmd

    metadata = str(Path(run_dir) / "metadata.sqlite")
    artifacts = mlmd.latest_artifacts(metadata)
    missing = [k for k in ("Ingestion.examples", "Ingestion.item_catalog") if k not in artifacts]
    if missing:
        raise ValueError(f"{metadata} records no {', '.join(missing)}; run `towerflow run --output-dir {run_dir}`")
    store = mlmd.open_store(metadata)
    [examples] = store.get_artifacts_by_uri(artifacts["Ingestion.examples"])[-1:]
    cutoffs = mlmd.property_values(examples).get("split_cutoffs") or []
    if len(cutoffs) != 2:
        raise ValueError("the ingestion run recorded no (eval, test) cut-offs; abtest needs a global_time split")
    data = OfflineData.from_artifacts(artifacts["Ingestion.examples"], artifacts["Ingestion.item_catalog"])
    # the store loaded with `--as-of test-cutoff` holds the events strictly before ceil(cut-off)
    return data.eval_set(), data, math.ceil(cutoffs[1])


def _ask_service(client, url: str, user_id: str, arm: str, as_of: int, k: int) -> dict:
    body = {"user_id": user_id, "k": k, "context": {"timestamp": as_of}, "explore": False, "source": arm}
    response = client.post(f"{url}/v1/recommend", json=body)
    if response.status_code != 200:
        raise RuntimeError(f"the service answered {response.status_code} for user {user_id} ({arm}): {response.text}")
    return response.json()


def replay_service_arm(url: str, arm: str, users: list[str], as_of: int, k: int, concurrency: int) -> ArmResult:
    import httpx

    from towerflow.serving.experiments.stats import model_scores

    result = ArmResult(arm, users, [[] for _ in users])
    with httpx.Client(timeout=30.0) as client:
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            futures = {pool.submit(_ask_service, client, url, u, arm, as_of, k): i for i, u in enumerate(users)}
            for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                body = future.result()
                i = futures[future]
                result.lists[i] = [item["item_id"] for item in body["items"]]
                result.top_scores += model_scores(body["items"])
                result.fallbacks += body.get("fallback") is not None
                result.model_versions = result.model_versions or body.get("model_versions")
                if done % 50 == 0 or done == len(users):
                    print(f"  {arm}: {done}/{len(users)} users replayed", file=sys.stderr)
    return result


def replay_run_arm(run_dir: str, data, eval_set, users: list[str], as_of: int, k: int) -> ArmResult:
    """The run's latest two-tower + ranker, scored in-process with the offline evaluator's re-ranking."""
    from towerflow.components.evaluation.model_evaluator import read_result
    from towerflow.components.evaluation.offline import RerankedRecommender, TwoTowerRecommender
    from towerflow.components.index.component import tower_dir
    from towerflow.pipeline import mlmd

    artifacts = mlmd.latest_artifacts(str(Path(run_dir) / "metadata.sqlite"))
    if "TwoTowerTrainer.model" not in artifacts:
        raise ValueError(f"{run_dir} has no trained two-tower model")
    settings = {}
    if "ModelEvaluator.blessing" in artifacts:
        settings = read_result(artifacts["ModelEvaluator.blessing"]).get("config", {})
    retrieval = TwoTowerRecommender(tower_dir(artifacts["TwoTowerTrainer.model"]), data, as_of)
    recommend = retrieval
    if "RankingTrainer.model" in artifacts:
        keys = ("depth", "score", "weight")
        chosen = {key: settings[f"rerank_{key}"] for key in keys if settings.get(f"rerank_{key}") is not None}
        recommend = RerankedRecommender(retrieval, tower_dir(artifacts["RankingTrainer.model"]), data, as_of, **chosen)
    seen_by_user = dict(zip(eval_set.user_ids, eval_set.seen))
    lists = [list(x) for x in recommend(users, k, [set(seen_by_user[u]) for u in users])]
    return ArmResult(Path(run_dir).name, users, lists, served_by="in-process (offline evaluator code)")


def per_user_metrics(result: ArmResult, relevant_by_user: dict) -> dict:
    from towerflow.components.evaluation.metrics import ranking_metrics_per_user

    if not result.users:
        return {"hit_rate@10": [], "ndcg@10": [], "recall@100": []}
    values = ranking_metrics_per_user(result.lists, [relevant_by_user[u] for u in result.users], KS)
    return {name: values[name] for name in ("hit_rate@10", "ndcg@10", "recall@100")}


def compare(control: dict, treatment: dict, n_resamples: int, seed: int) -> list:
    from towerflow.serving.experiments.stats import bootstrap_difference, two_proportion_ztest

    return [
        two_proportion_ztest("hit_rate@10", control["hit_rate@10"], treatment["hit_rate@10"]),
        bootstrap_difference("ndcg@10", control["ndcg@10"], treatment["ndcg@10"], n_resamples, seed),
        bootstrap_difference("recall@100", control["recall@100"], treatment["recall@100"], n_resamples, seed + 1),
    ]


def format_report(arms: dict[str, ArmResult], comparisons: list, mode: str) -> str:
    control, treatment = arms["control"], arms["treatment"]
    lines = [
        f"{mode}: control = {control.name} ({len(control.users)} users, {control.served_by}), "
        f"treatment = {treatment.name} ({len(treatment.users)} users, {treatment.served_by})",
        f"{'metric':<12} {'control':>8} {'treatment':>9} {'diff':>8} {'95% CI':>19} {'p-value':>8}  test",
    ]
    for c in comparisons:
        ci = f"[{c.ci_low:+.3f}, {c.ci_high:+.3f}]"
        star = " *" if c.significant else ""
        lines.append(
            f"{c.metric:<12} {c.control:>8.3f} {c.treatment:>9.3f} {c.difference:>+8.3f} {ci:>19} {c.p_value:>8.4f}"
            f"  {c.test}{star}"
        )
    for side in (control, treatment):
        if side.served_by == "service":
            lines.append(
                f"{side.name}: model versions {side.model_versions}, {side.fallbacks} responses with a fallback"
            )
            if side.fallbacks:
                lines.append(
                    f"  warning: {side.fallbacks} {side.name} lists are fallbacks, not the models' lists; give the "
                    "service larger budgets_ms for replays (quality, not latency, is measured here)"
                )
    lines.append("* p < 0.05")
    return "\n".join(lines)


def run_abtest(args) -> dict:
    from towerflow.serving.experiments import bucketing
    from towerflow.serving.experiments.config import Arm, Experiment

    control_arm = _parse_arm(args.control)
    if args.aa and args.treatment:
        raise ValueError("--aa serves the control to both halves; leave out --treatment")
    if not args.aa and not args.treatment:
        raise ValueError("give --treatment (or --aa for an A/A test)")
    treatment_arm = control_arm if args.aa else _parse_arm(args.treatment)
    if not 1 <= args.k <= 1000 or args.k < max(KS):
        raise ValueError(f"--k must be in [{max(KS)}, 1000] (Recall@{max(KS)} needs {max(KS)} items)")
    url = args.service.rstrip("/")
    eval_set, data, as_of = load_protocol(args.run_dir)
    experiment = Experiment("abtest", (Arm("control", control_arm), Arm("treatment", treatment_arm)), salt=args.salt)
    buckets = {"control": [], "treatment": []}
    for user in eval_set.user_ids:
        buckets[bucketing.assign(experiment, user).arm].append(user)
    mode = "A/A test" if args.aa else "A/B test"
    print(
        f"Replaying {len(eval_set)} test users of {args.run_dir} as of {as_of} (the test cut-off) through {url}: "
        f"{len(buckets['control'])} control, {len(buckets['treatment'])} treatment (salt {args.salt!r})",
        file=sys.stderr,
    )
    arms = {}
    for side, arm in (("control", control_arm), ("treatment", treatment_arm)):
        users = buckets[side]
        if arm in SERVICE_ARMS:
            arms[side] = replay_service_arm(url, arm, users, as_of, args.k, args.concurrency)
        else:
            arms[side] = replay_run_arm(arm, data, eval_set, users, as_of, args.k)
    relevant = dict(zip(eval_set.user_ids, eval_set.relevant))
    metrics = {side: per_user_metrics(result, relevant) for side, result in arms.items()}
    comparisons = compare(metrics["control"], metrics["treatment"], args.bootstrap, args.seed)
    report = {
        "mode": "aa" if args.aa else "ab",
        "service": url,
        "run_dir": args.run_dir,
        "as_of": as_of,
        "salt": args.salt,
        "arms": {
            side: {
                "arm": r.name,
                "users": len(r.users),
                "served_by": r.served_by,
                "model_versions": r.model_versions,
                "fallbacks": r.fallbacks,
            }
            for side, r in arms.items()
        },
        "comparisons": [c.to_dict() for c in comparisons],
        "text": format_report(arms, comparisons, mode),
    }
    return report


def write_score_reference(args, path: str) -> None:
    """The stable version's top-10 scores on every test user at the cut-off: the canary watcher's PSI reference."""
    from towerflow.serving.experiments.stats import ScoreReference

    eval_set, _, as_of = load_protocol(args.run_dir)
    stable = replay_service_arm(
        args.service.rstrip("/"), "stable", list(eval_set.user_ids), as_of, 10, args.concurrency
    )
    source = f"stable {stable.model_versions} on {len(eval_set)} test users of {args.run_dir} as of {as_of}"
    reference = ScoreReference.from_scores(stable.top_scores, source=source)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(reference.to_dict(), indent=2) + "\n", encoding="utf-8")
    print(f"Score reference ({len(stable.top_scores)} scores, {len(reference.fractions)} bins) written to {path}")


def _abtest(args) -> None:
    report = run_abtest(args)
    print(report["text"])
    if args.score_reference:
        write_score_reference(args, args.score_reference)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
        print(f"Report written to {args.output}")


def add_commands(subparsers) -> None:
    """Registers `abtest` on the `towerflow` sub-command parsers."""
    ab = subparsers.add_parser("abtest", help="replay the test window through the live service as an A/B (or A/A) test")
    ab.add_argument("--service", required=True, help="the recommender service's URL, e.g. http://127.0.0.1:8080")
    ab.add_argument("--run-dir", required=True, help="pipeline run whose test window is replayed (its MLMD)")
    ab.add_argument("--control", required=True, help="popularity | stable | canary | a pipeline run directory")
    ab.add_argument("--treatment", default=None, help="same choices as --control")
    ab.add_argument("--aa", action="store_true", help="A/A: the control serves both halves")
    ab.add_argument("--salt", default="abtest", help="bucketing salt (a new salt = a new split of the users)")
    ab.add_argument("--k", type=int, default=100, help="list length asked for (>= 100 for Recall@100)")
    ab.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    ab.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples")
    ab.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    ab.add_argument("--output", default=None, help="also write the report as JSON here")
    ab.add_argument(
        "--score-reference",
        default=None,
        help="also write stable's score distribution on the test window here (canary.score_reference)",
    )
    ab.set_defaults(func=_abtest)
