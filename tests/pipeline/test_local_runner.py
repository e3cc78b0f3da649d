"""ParallelLocalDagRunner's scheduling: nodes start when their upstream nodes finished, child nodes run
next to this process's nodes, failures stop the run after the running nodes finished."""

import time

import pytest
from tfx.proto.orchestration import pipeline_pb2

from towerflow.pipeline import local_runner


def _pipeline(edges: dict[str, list[str]]) -> pipeline_pb2.Pipeline:
    pipeline = pipeline_pb2.Pipeline()
    for node_id, upstream in edges.items():
        node = pipeline.nodes.add().pipeline_node
        node.node_info.id = node_id
        node.upstream_nodes.extend(upstream)
    return pipeline


class _FakeChild:
    """A child process that 'runs' for `seconds` and exits with `code`."""

    def __init__(self, log, node_id, seconds, code):
        self._log, self._node, self._end, self._code = log, node_id, time.monotonic() + seconds, code
        log.append(("start", node_id, time.monotonic()))
        self.returncode = None

    def poll(self):
        if self.returncode is None and time.monotonic() >= self._end:
            self.returncode = self._code
            self._log.append(("end", self._node, time.monotonic()))
        return self.returncode

    def terminate(self):
        self.returncode = -15

    def wait(self):
        return self.returncode


def _run(monkeypatch, edges, child_nodes, child_seconds=0.6, local_seconds=0.3, fail=(), log=None):
    log = [] if log is None else log

    def launch(pipeline, node_id):
        log.append(("start", node_id, time.monotonic()))
        time.sleep(local_seconds)
        log.append(("end", node_id, time.monotonic()))
        if node_id in fail:
            raise ValueError(f"{node_id} failed")

    def popen(command, preexec_fn=None):
        node_id = command[command.index("--node") + 1]
        return _FakeChild(log, node_id, child_seconds, 1 if node_id in fail else 0)

    monkeypatch.setattr(local_runner, "_launch", launch)
    monkeypatch.setattr(local_runner.subprocess, "Popen", popen)
    runner = local_runner.ParallelLocalDagRunner(child_nodes=child_nodes, niceness={})
    pipeline = _pipeline(edges)
    order = list(edges)
    upstream = {n: set(u) for n, u in edges.items()}
    try:
        runner._schedule(pipeline, order, upstream, "unused.pb")
    finally:
        times = {(event, node): t for event, node, t in log}
    return times


EDGES = {"A": [], "B": ["A"], "C": ["A"], "D": ["B", "C"]}


def test_a_child_node_runs_next_to_a_local_node_and_dependents_wait_for_both(monkeypatch):
    t = _run(monkeypatch, EDGES, child_nodes={"B"})
    assert t[("start", "B")] >= t[("end", "A")] and t[("start", "C")] >= t[("end", "A")]
    assert t[("start", "B")] < t[("end", "C")]  # side by side
    assert t[("start", "D")] >= max(t[("end", "B")], t[("end", "C")])


def test_local_nodes_run_one_at_a_time_in_order(monkeypatch):
    t = _run(monkeypatch, EDGES, child_nodes=set())
    assert t[("end", "A")] <= t[("start", "B")] and t[("end", "B")] <= t[("start", "C")]
    assert t[("end", "C")] <= t[("start", "D")]


def test_a_failed_child_stops_the_run_after_the_running_nodes(monkeypatch):
    with pytest.raises(RuntimeError, match="B.*exit status 1"):
        _run(monkeypatch, EDGES, child_nodes={"B"}, fail={"B"})


def test_a_failed_local_node_raises_its_own_error_and_starts_nothing_after(monkeypatch):
    log = []
    with pytest.raises(ValueError, match="C failed"):
        _run(monkeypatch, EDGES, child_nodes={"B"}, fail={"C"}, log=log)
    started = [node for event, node, _ in log if event == "start"]
    assert "D" not in started and log[-1][:2] == ("end", "B")  # B (running) finished before the error


def test_a_child_node_starts_while_a_local_node_runs(monkeypatch):
    # B (child) finishes while C (local) still runs: E, which needs only B, starts before C ends.
    edges = {"A": [], "B": ["A"], "C": ["A"], "E": ["B"], "D": ["C", "E"]}
    t = _run(monkeypatch, edges, child_nodes={"B", "E"}, child_seconds=0.4, local_seconds=1.5)
    assert t[("end", "B")] <= t[("start", "E")] < t[("end", "C")]
    assert t[("start", "D")] >= max(t[("end", "C")], t[("end", "E")])


def test_a_chain_runs_in_one_child_process_and_its_dependents_wait_for_all_of_it(monkeypatch):
    # B -> E -> F chained in B's process; G needs only E, D needs C and F
    edges = {"A": [], "B": ["A"], "C": ["A"], "E": ["B"], "F": ["E", "A"], "G": ["E"], "D": ["C", "F"]}
    commands = []

    def launch(pipeline, node_id):
        time.sleep(0.05)

    def popen(command, preexec_fn=None):
        nodes = [command[i + 1] for i, part in enumerate(command) if part == "--node"]
        commands.append(nodes)
        return _FakeChild([], nodes[0], 0.3, 0)

    monkeypatch.setattr(local_runner, "_launch", launch)
    monkeypatch.setattr(local_runner.subprocess, "Popen", popen)
    runner = local_runner.ParallelLocalDagRunner(
        child_nodes={"B", "E", "F", "G"}, niceness={}, chains={"B": ("E", "F")}
    )
    runner._schedule(_pipeline(edges), list(edges), {n: set(u) for n, u in edges.items()}, "unused.pb")
    assert commands == [["B", "E", "F"], ["G"]]  # G starts once the chain's process (which ran E) is done


def test_a_chained_node_that_needs_more_runs_on_its_own(monkeypatch):
    # E needs C too, which is not done when B starts: E gets a child process of its own later
    edges = {"A": [], "B": ["A"], "C": ["A"], "E": ["B", "C"]}
    commands = []

    def popen(command, preexec_fn=None):
        nodes = [command[i + 1] for i, part in enumerate(command) if part == "--node"]
        commands.append(nodes)
        return _FakeChild([], nodes[0], 0.1, 0)

    monkeypatch.setattr(local_runner, "_launch", lambda pipeline, node_id: time.sleep(0.3))
    monkeypatch.setattr(local_runner.subprocess, "Popen", popen)
    runner = local_runner.ParallelLocalDagRunner(child_nodes={"B", "E"}, niceness={}, chains={"B": ("E",)})
    runner._schedule(_pipeline(edges), list(edges), {n: set(u) for n, u in edges.items()}, "unused.pb")
    assert commands == [["B"], ["E"]]


def test_the_child_entry_point_runs_its_nodes_in_order(monkeypatch, tmp_path):
    ir = tmp_path / "pipeline.pb"
    ir.write_bytes(_pipeline({"A": [], "B": ["A"]}).SerializeToString())
    ran = []
    monkeypatch.setattr(local_runner, "_launch", lambda pipeline, node_id: ran.append(node_id))
    assert local_runner._main(["--ir", str(ir), "--node", "A", "--node", "B"]) == 0
    assert ran == ["A", "B"]


def test_isolated_nodes_run_in_child_processes_without_taking_the_off_path_slots(monkeypatch):
    # A and D (the critical path) isolated; B and C off the path with one slot: A, then C next to B's
    # wait, D when both are done. Nothing runs in this process.
    edges = {"A": [], "B": ["A"], "C": ["A"], "D": ["B", "C"]}
    started, local = [], []

    def popen(command, preexec_fn=None):
        nodes = [command[i + 1] for i, part in enumerate(command) if part == "--node"]
        started.append((nodes, sum(1 for child in children if child.returncode is None)))
        child = _FakeChild([], nodes[0], 0.3, 0)
        children.append(child)
        return child

    children = []
    monkeypatch.setattr(local_runner, "_launch", lambda pipeline, node_id: local.append(node_id))
    monkeypatch.setattr(local_runner.subprocess, "Popen", popen)
    runner = local_runner.ParallelLocalDagRunner(
        child_nodes={"B", "C"}, max_children=1, niceness={}, isolated_nodes={"A", "D"}
    )
    runner._schedule(_pipeline(edges), list(edges), {n: set(u) for n, u in edges.items()}, "unused.pb")
    assert local == []
    assert [nodes for nodes, _ in started] == [["A"], ["B"], ["C"], ["D"]]
    # B and C share the single off-path slot: C starts only after B ended
    assert started[2][1] == 0


def test_an_isolated_node_starts_while_off_path_children_fill_every_slot(monkeypatch):
    # B (off the path) holds the only slot for a long time; C (isolated) starts right after A anyway.
    edges = {"A": [], "B": ["A"], "C": ["A"]}
    log = []

    def popen(command, preexec_fn=None):
        node_id = command[command.index("--node") + 1]
        return _FakeChild(log, node_id, 1.0 if node_id == "B" else 0.1, 0)

    monkeypatch.setattr(local_runner, "_launch", lambda pipeline, node_id: None)
    monkeypatch.setattr(local_runner.subprocess, "Popen", popen)
    runner = local_runner.ParallelLocalDagRunner(
        child_nodes={"A", "B"}, max_children=1, niceness={}, isolated_nodes={"C"}
    )
    runner._schedule(_pipeline(edges), list(edges), {n: set(u) for n, u in edges.items()}, "unused.pb")
    t = {(event, node): when for event, node, when in log}
    assert t[("start", "C")] < t[("end", "B")]
