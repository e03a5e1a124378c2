"""plan(topology, options, workers) -> Plan: disjoint core blocks, pure and total.

Rules (issue 3): blocks are disjoint across all workers of all models; one thread per
physical core unless --use_logical_core (then a core's siblings stay in one block, so
two workers never share a core); a block never spans NUMA nodes when a block of that
size fits in one (blocks shrink instead, leftover cores are reported); blocks are
balanced across nodes; more workers than cores is an error, never a silent overlap.
Hybrid machines: a (node, core kind) pair is a placement domain, so a block does not
mix performance and efficiency cores when it fits in one kind (OpenMP's static
schedule would wait for the slow cores).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.host import Topology, format_cpulist
from torchserve_cpu.launcher.planning.options import LauncherOptions

LATENCY_MODE_CORES = 4  # run_cpu's --latency_mode block size


@dataclass(frozen=True)
class Block:
    """The CPUs one worker runs on; `node` is None when they span nodes or it is unknown."""

    index: int
    cpus: tuple[int, ...]
    node: int | None
    cores: int  # physical cores in the block

    @property
    def threads(self) -> int:
        """OpenMP threads for the block: one per CPU it holds."""
        return len(self.cpus)

    def to_dict(self) -> dict[str, object]:
        return {"cpus": list(self.cpus), "node": self.node, "threads": self.threads}


@dataclass(frozen=True)
class Plan:
    """Blocks for every worker slot, plus what was left over and why."""

    blocks: tuple[Block, ...]
    workers: int  # workers the config asked for (blocks may exceed it with --ninstances)
    leftover: tuple[int, ...]
    notes: tuple[str, ...]
    options: LauncherOptions

    def to_dict(self) -> dict[str, object]:
        return {
            "workers": [block.to_dict() for block in self.blocks],
            "requested_workers": self.workers,
            "leftover_cpus": list(self.leftover),
            "notes": list(self.notes),
            "launcher_args": self.options.args,
        }


@dataclass(frozen=True)
class _Unit:
    """One physical core as the planner allocates it."""

    cpus: tuple[int, ...]
    node: int | None
    domain: tuple[int | None, str | None]


def plan(topology: Topology, options: LauncherOptions, workers: int) -> Plan:
    """Blocks for `workers` workers (or --ninstances slots) over the topology's CPUs."""
    if workers < 0:
        raise LauncherError(f"workers must be >= 0, got {workers}")
    notes: list[str] = []
    units = _units(topology, options)
    quota_cpus = topology.quota_cpus
    budget = len(units)
    if quota_cpus is not None and quota_cpus < len(units):
        notes.append(
            f"cgroup CPU quota {topology.cpu_quota:g} CPUs: blocks use {quota_cpus} of "
            f"{len(units)} allowed cores so threads are not throttled"
        )
        budget = quota_cpus
    domains: dict[tuple[int | None, str | None], list[_Unit]] = {}
    for unit in units:
        domains.setdefault(unit.domain, []).append(unit)
    count = _block_count(options, workers, {unit.node for unit in units})
    if count == 0:
        return Plan((), workers, _cpus(units), tuple(notes), options)
    size, explicit = _block_size(options, budget, count, units)
    groups = _place(list(domains.values()), count, size, explicit, options, notes)
    used = {cpu for group in groups for unit in group for cpu in unit.cpus}
    blocks = tuple(
        Block(
            index=index,
            cpus=_cpus(group),
            node=_single({unit.node for unit in group}),
            cores=len(group),
        )
        for index, group in enumerate(groups)
    )
    leftover = tuple(cpu for cpu in _cpus(units) if cpu not in used)
    if leftover:
        notes.append(f"{len(leftover)} CPUs left over: {format_cpulist(leftover)}")
    return Plan(blocks, workers, leftover, tuple(notes), options)


def _units(topology: Topology, options: LauncherOptions) -> list[_Unit]:
    cpus = list(topology.cpus)
    if options.core_list is not None:
        available = {cpu.id for cpu in cpus}
        missing = [cpu for cpu in options.core_list if cpu not in available]
        if missing:
            raise LauncherError(
                f"--core_list names CPUs {format_cpulist(missing)} that are offline or not "
                f"allowed here; allowed: {format_cpulist(available)}"
            )
        wanted = set(options.core_list)
        cpus = [cpu for cpu in cpus if cpu.id in wanted]
    if options.node_id is not None:
        with_cpus = sorted({cpu.node for cpu in cpus if cpu.node is not None})
        cpus = [cpu for cpu in cpus if cpu.node == options.node_id]
        if not cpus:
            raise LauncherError(
                f"--node_id {options.node_id}: no allowed CPUs on that node; "
                f"nodes with allowed CPUs: {with_cpus}"
            )
    if not cpus:
        raise LauncherError(f"{topology.source}: no allowed online CPUs to plan over")
    by_core: dict[tuple[int, ...], list[int]] = {}
    info = {cpu.id: cpu for cpu in cpus}
    for cpu in cpus:
        by_core.setdefault(cpu.core, []).append(cpu.id)
    units = []
    for members in by_core.values():
        first = info[min(members)]
        chosen = tuple(sorted(members)) if options.use_logical_core else (min(members),)
        units.append(_Unit(chosen, first.node, (first.node, first.kind)))
    # node order first (ids with gaps sort numerically), then CPU order inside a node
    units.sort(key=lambda u: (-1 if u.node is None else u.node, u.cpus[0]))
    return units


def _block_count(options: LauncherOptions, workers: int, nodes: set[int | None]) -> int:
    if options.mode == "throughput":
        if workers > len(nodes):
            raise LauncherError(
                f"--throughput_mode gives one block per NUMA node ({len(nodes)}), but the "
                f"config asks for {workers} workers; lower the workers or drop the flag"
            )
        return len(nodes)
    if options.ninstances is not None:
        if workers > options.ninstances:
            raise LauncherError(
                f"--ninstances {options.ninstances} is fewer than the {workers} workers the "
                "config asks for (default_workers_per_model / minWorkers)"
            )
        return options.ninstances
    return workers


def _block_size(
    options: LauncherOptions, available: int, count: int, units: Sequence[_Unit]
) -> tuple[int, bool]:
    if options.ncores_per_instance is not None:
        size = options.ncores_per_instance
        if size * count > available:
            raise LauncherError(
                f"--ncores_per_instance {size} x {count} workers needs {size * count} "
                f"physical cores; only {available} usable (allowed: {format_cpulist(_cpus(units))})"
            )
        return size, True
    size = available // count
    if size == 0:
        raise LauncherError(
            f"{count} workers need at least {count} physical cores, but only {available} "
            f"are usable (allowed: {format_cpulist(_cpus(units))}); lower "
            "default_workers_per_model or minWorkers, or widen the cpuset"
        )
    if options.mode == "latency":
        size = min(size, LATENCY_MODE_CORES)
    return size, False


def _place(
    domains: list[list[_Unit]],
    count: int,
    size: int,
    explicit: bool,
    options: LauncherOptions,
    notes: list[str],
) -> list[list[_Unit]]:
    """Cut `count` blocks of `size` cores, inside one domain whenever that is possible."""
    largest = max(len(domain) for domain in domains)
    local = min(size, largest)
    while local > 1 and sum(len(d) // local for d in domains) < count:
        local -= 1
    fits_locally = sum(len(d) // local for d in domains) >= count
    if size <= largest or options.skip_cross_node_cores:
        if local < size and explicit:
            if options.skip_cross_node_cores:
                raise LauncherError(
                    f"--ncores_per_instance {size} with --skip_cross_node_cores: only "
                    f"{sum(len(d) // size for d in domains)} blocks fit inside single nodes"
                )
        elif fits_locally:
            if local < size:
                notes.append(
                    f"blocks have {local} cores, not {size}, so that none spans a NUMA node"
                )
            return _cut_locally(domains, count, local)
    flat = [unit for domain in domains for unit in domain]
    notes.append(
        f"blocks of {size} cores do not fit in one NUMA node (largest has {largest} cores "
        "of one kind): some blocks span nodes"
    )
    return [flat[i * size : (i + 1) * size] for i in range(count)]


def _cut_locally(domains: list[list[_Unit]], count: int, size: int) -> list[list[_Unit]]:
    """Give each block to the domain with the most free room (balanced across nodes)."""
    room = [len(domain) // size for domain in domains]
    taken = [0] * len(domains)
    for _ in range(count):
        best = max(range(len(domains)), key=lambda i: (room[i] - taken[i], -i))
        taken[best] += 1
    blocks = []
    for domain, number in zip(domains, taken, strict=True):
        blocks.extend(domain[i * size : (i + 1) * size] for i in range(number))
    return blocks


def _cpus(units: Sequence[_Unit]) -> tuple[int, ...]:
    return tuple(sorted(cpu for unit in units for cpu in unit.cpus))


def _single(values: set[int | None]) -> int | None:
    return next(iter(values)) if len(values) == 1 else None


def render_plan(result: Plan, models: Sequence[str] = ()) -> str:
    """The plan as a table; `models` names each worker's model, in block order."""
    width = max([5, *(len(name) for name in models)])

    def row(worker: object, model: str, node: str, threads: object, cpus: str) -> str:
        named = f"{model:{width}}  " if models else ""
        return f"{worker:>6}  {named}{node:>4}  {threads:>7}  {cpus}"

    lines = [row("worker", "model", "node", "threads", "cpus")]
    for i, block in enumerate(result.blocks):
        lines.append(row(block.index, models[i] if i < len(models) else "-",
                         "-" if block.node is None else str(block.node), block.threads,
                         format_cpulist(block.cpus)))
    lines.append(f"leftover: {format_cpulist(result.leftover) or 'none'}")
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)
