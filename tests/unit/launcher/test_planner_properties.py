"""Invariants of any plan over any machine hypothesis can think of."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.options import LauncherOptions
from torchserve_cpu.launcher.planner import plan
from torchserve_cpu.launcher.topology import Cpu, Topology


@st.composite
def machines(draw: st.DrawFn) -> Topology:
    """Nodes of uneven size, SMT numbered socket-first or adjacently, some CPUs missing."""
    node_ids = draw(st.lists(st.integers(0, 40), min_size=1, max_size=5, unique=True))
    cores_per_node = [draw(st.integers(1, 12)) for _ in node_ids]
    smt = draw(st.sampled_from([1, 2, 4]))
    adjacent = draw(st.booleans())
    total_cores = sum(cores_per_node)
    cpus = []
    core_index = 0
    for node, count in zip(node_ids, cores_per_node, strict=True):
        for _ in range(count):
            for thread in range(smt):
                if adjacent:
                    cpu_id = core_index * smt + thread
                else:
                    cpu_id = thread * total_cores + core_index
                cpus.append(Cpu(id=cpu_id, core=(0, core_index), package=0, node=node))
            core_index += 1
    hidden = draw(st.sets(st.sampled_from([c.id for c in cpus]), max_size=len(cpus) - 1))
    topology = Topology(cpus=tuple(cpus), nodes=tuple(sorted(node_ids)), source="hypothesis")
    return topology.restrict(c.id for c in cpus if c.id not in hidden)


@settings(max_examples=300, deadline=None)
@given(machines(), st.integers(1, 40), st.booleans())
def test_any_plan_is_disjoint_one_thread_per_core_and_node_local(
    topology: Topology, workers: int, logical: bool
) -> None:
    cores = {cpu.id: cpu.core for cpu in topology.cpus}
    physical = len(topology.cores())
    try:
        result = plan(topology, LauncherOptions(use_logical_core=logical), workers)
    except LauncherError as error:
        assert workers > physical, error
        return
    assert len(result.blocks) == workers
    seen_cpus: set[int] = set()
    seen_cores: set[tuple[int, ...]] = set()
    for block in result.blocks:
        assert not seen_cpus & set(block.cpus), "blocks overlap"
        block_cores = {cores[cpu] for cpu in block.cpus}
        assert not seen_cores & block_cores, "two blocks share a physical core (SMT)"
        seen_cpus |= set(block.cpus)
        seen_cores |= block_cores
        if not logical:
            assert len(block_cores) == len(block.cpus), "two threads on one core"
        assert block.threads >= 1
    sizes = {block.cores for block in result.blocks}
    assert len(sizes) == 1, "blocks of one plan are the same size"
    size = sizes.pop()
    per_node: dict[int | None, int] = {}
    for members in topology.cores().values():
        per_node[members[0].node] = per_node.get(members[0].node, 0) + 1
    if physical // workers <= max(per_node.values()):
        assert all(block.node is not None for block in result.blocks), "block spans nodes"
    assert seen_cpus.isdisjoint(result.leftover)
    assert size * workers + len({cores[c] for c in result.leftover}) == physical
