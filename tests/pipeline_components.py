"""The component ids a full towerflow pipeline is expected to have, for the tests that check runs and specs."""

DATA_COMPONENTS = frozenset({"Ingestion", "StatisticsGen", "ImportSchemaGen", "ExampleValidator"})
TRAINED_COMPONENTS = DATA_COMPONENTS | {
    "Transform",
    "TwoTowerTrainer",
    "RankingTrainer",
    "IndexBuilder",
    "IndexEvaluator",
    "LatestBlessedModelResolver",
    "BaselineEvaluator",
    "ModelEvaluator",
}
PUSHERS = frozenset({"TwoTowerPusher", "RankingPusher"})
# A Kubeflow V2 spec compiles the LatestBlessedModelStrategy resolver into two resolver tasks.
KUBEFLOW_RESOLVER_TASKS = frozenset(
    {"LatestBlessedModelResolver-model-resolver", "LatestBlessedModelResolver-model-blessing-resolver"}
)
