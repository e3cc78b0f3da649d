"""`towerflow data fetch | synth`: get or make interaction logs.

towerflow data fetch --dataset ml-100k --data-dir data
towerflow data synth --users 10000 --items 5000 --interactions 500000 --out data/synth
"""

from __future__ import annotations


def _fetch(args) -> None:
    from towerflow.pipeline import datasets

    result = datasets.fetch(args.dataset, args.data_dir)
    print(f"Dataset {args.dataset} ({result.format} format, from {result.source}) is in {result.path}")


def _synth(args) -> None:
    from towerflow.pipeline import synthetic

    config = synthetic.SynthConfig(users=args.users, items=args.items, interactions=args.interactions, seed=args.seed)
    summary = synthetic.generate(args.out, config)
    print(
        f"Wrote {summary.interactions:,} interactions of {summary.users:,} users on {summary.items:,} items "
        f"to {summary.path} in {summary.seconds:.1f}s ({summary.rows_per_second:,.0f} rows/s)"
    )


def add_commands(commands) -> None:
    data = commands.add_parser("data", help="get or make interaction logs").add_subparsers(dest="data_command")
    data.required = True
    fetch = data.add_parser("fetch", help="download a MovieLens dataset (offline fallback for ml-100k)")
    fetch.add_argument("--dataset", default="ml-100k")
    fetch.add_argument("--data-dir", default="data")
    fetch.set_defaults(func=_fetch)
    synth = data.add_parser("synth", help="write a synthetic dataset in the towerflow format")
    synth.add_argument("--users", type=int, default=10_000)
    synth.add_argument("--items", type=int, default=5_000)
    synth.add_argument("--interactions", type=int, default=500_000)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", default="data/synth")
    synth.set_defaults(func=_synth)
