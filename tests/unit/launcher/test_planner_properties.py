"""Invariants of any plan over any machine hypothesis can think of."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.host.topology import Cpu, Topology
from torchserve_cpu.launcher.planning.options import LauncherOptions
from torchserve_cpu.launcher.planning.planner import plan


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


@st.composite
def requests(draw: st.DrawFn) -> tuple[Topology, LauncherOptions, int]:
    """A machine (maybe under a CPU quota) and options a config may hold, with a worker count."""
    topology = draw(machines())
    ids = [cpu.id for cpu in topology.cpus]
    core_list = draw(st.none() | st.sets(st.sampled_from(ids), min_size=1).map(sorted))
    options = LauncherOptions(
        use_logical_core=draw(st.booleans()),
        ncores_per_instance=draw(st.none() | st.integers(1, 12)),
        ninstances=draw(st.none() | st.integers(1, 8)),
        core_list=None if core_list is None else tuple(core_list),
    )
    quota = draw(st.none() | st.floats(0.5, 40.0))
    return topology.with_quota(quota), options, draw(st.integers(0, 12))


@settings(max_examples=400, deadline=None)
@given(requests())
def test_any_options_give_disjoint_blocks_with_one_thread_per_cpu(
    request: tuple[Topology, LauncherOptions, int],
) -> None:
    topology, options, workers = request
    allowed = [c for c in topology.cpus if options.core_list is None or c.id in options.core_list]
    cores: dict[tuple[int, ...], list[int]] = {}
    for cpu in allowed:
        cores.setdefault(cpu.core, []).append(cpu.id)
    budget = len(cores) if topology.quota_cpus is None else min(len(cores), topology.quota_cpus)
    count = workers if options.ninstances is None else options.ninstances
    size = options.ncores_per_instance or (budget // count if count else 0)
    try:
        result = plan(topology, options, workers)
    except LauncherError:  # only when the request cannot be met: say which
        too_many = options.ninstances is not None and workers > options.ninstances
        assert too_many or size == 0 or size * count > budget
        return
    assert not (options.ninstances is not None and workers > options.ninstances)
    assert len(result.blocks) == count
    core_of = {cpu.id: cpu.core for cpu in allowed}
    used: set[int] = set()
    used_cores: set[tuple[int, ...]] = set()
    for block in result.blocks:
        assert block.threads == len(block.cpus) >= 1
        assert set(block.cpus) <= set(core_of), "a CPU outside core_list / the allowed set"
        assert not used & set(block.cpus), "blocks share a CPU"
        block_cores = {core_of[cpu] for cpu in block.cpus}
        assert not used_cores & block_cores, "blocks share a physical core"
        assert len(block_cores) == block.cores
        siblings = sum(len(cores[c]) for c in block_cores)
        expected = siblings if options.use_logical_core else len(block_cores)
        assert block.threads == expected, "one thread per core, or per allowed sibling"
        used |= set(block.cpus)
        used_cores |= block_cores
    sizes = {block.cores for block in result.blocks}
    assert len(sizes) <= 1
    if sizes and options.ncores_per_instance is not None:
        assert sizes == {options.ncores_per_instance}
    assert len(used_cores) <= budget, "more cores than the quota pays for"
    assert used.isdisjoint(result.leftover)
    planned_over = {cpu for members in cores.values()
                    for cpu in (members if options.use_logical_core else [min(members)])}
    assert used | set(result.leftover) == planned_over
    # a block spans nodes only when blocks of its size cannot all be cut inside nodes
    per_node: dict[int | None, int] = {}
    for members in cores.values():
        node = topology.by_id()[members[0]].node
        per_node[node] = per_node.get(node, 0) + 1
    if sizes and sum(n // next(iter(sizes)) for n in per_node.values()) >= count:
        assert all(block.node is not None for block in result.blocks), "needless span"
