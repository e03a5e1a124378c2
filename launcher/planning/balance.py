"""assign(machine, demands) -> Assignment: which block each live worker holds now.

Demand is what TorchServe really runs at this moment: one `Demand` per live worker of
any model of any TorchServe instance on the host, whether it was started with the
server, registered later through the management API, scaled up, or restarted after a
crash. Nothing is read from config counts, so a model registered later needs no entry.

Workers of one instance share a `Pool` (the CPUs its frontend may use, its CPU quota,
its cpu_launcher_args). For each pool the planner cuts blocks:
- elastic (the default, `--ncores_per_instance`, `--latency_mode`): as many blocks as the
  pool has live workers, so the cores are re-divided whenever a worker comes or goes;
- reserved (`--ninstances N`, `--throughput_mode`): the fixed layout of N blocks, free
  slots stay idle (room for scaling, as documented for run_cpu).
Workers keep as much of the CPUs they hold as the new layout allows (the least
movement, so NUMA-local memory mostly stays local). Pools that overlap (instances with
different args) are served in order of their oldest worker, each over what the earlier
ones left. When there are more workers than blocks, the extra ones share blocks, a
model's workers on different blocks first, with their thread counts divided (never N x
cores threads); the
joining side decides whether that is allowed (`--oversubscribe refuse` in the registry).
Pure: no I/O, tested on saved topologies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.host import CoreKey, Topology, format_cpulist
from torchserve_cpu.launcher.planning.options import LauncherOptions, parse_launcher_args
from torchserve_cpu.launcher.planning.planner import Block, plan

WorkerKey = tuple[int, int]  # (pid, start time): one process even after pid reuse


@dataclass(frozen=True)
class Pool:
    """What the workers of one TorchServe instance may use."""

    cpus: tuple[int, ...]  # allowed to the frontend: cgroup cpuset ∩ affinity
    quota: float | None  # cgroup CPU quota in CPUs
    args: str  # cpu_launcher_args, as written (what the registry stores)
    #: the args parsed, once, when the pool is made (from a config or the registry's text)
    options: LauncherOptions = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", parse_launcher_args(self.args))


@dataclass(frozen=True)
class Demand:
    """One live worker as the balancer sees it."""

    key: WorkerKey
    model: str
    pool: Pool
    seq: int  # order of arrival: older workers keep their place first
    holding: tuple[int, ...] = ()  # CPUs of its current block, if any
    home: tuple[int, ...] = ()  # CPUs of its first block: where it grew from, and returns


@dataclass(frozen=True)
class Seat:
    """A worker's place: its block, its thread count, and who else sits on it."""

    block: Block
    threads: int
    shared_with: tuple[WorkerKey, ...] = ()


@dataclass(frozen=True)
class Assignment:
    seats: dict[WorkerKey, Seat] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def shared(self) -> set[WorkerKey]:
        return {key for key, seat in self.seats.items() if seat.shared_with}


def is_reserved(options: LauncherOptions) -> bool:
    """A fixed layout whatever the number of live workers."""
    return options.ninstances is not None or options.mode == "throughput"


def assign(machine: Topology, demands: Sequence[Demand]) -> Assignment:
    """Seats for every demand. Raises LauncherError only for a pool whose own settings
    cannot be planned at all (e.g. --node_id of a node with no allowed CPU)."""
    pools: dict[Pool, list[Demand]] = {}
    for demand in sorted(demands, key=lambda d: d.seq):
        pools.setdefault(demand.pool, []).append(demand)
    seats: dict[WorkerKey, Seat] = {}
    notes: list[str] = []
    core_of = {cpu.id: cpu.core for cpu in machine.cpus}
    # Whole physical cores are taken: the SMT sibling of a core an earlier instance runs on
    # is not free (planning over it put two instances' threads on one core, unreported).
    taken: set[CoreKey] = set()
    for pool, members in pools.items():  # dict order = oldest worker first
        options = pool.options
        free = [cpu for cpu in pool.cpus if core_of.get(cpu) not in taken]
        if not free:
            notes.append(
                f"pool {format_cpulist(pool.cpus)} ({pool.args or 'no args'}) is fully used "
                "by an earlier TorchServe instance: its workers share those cores"
            )
            free = list(pool.cpus)
        topology = machine.restrict(free).with_quota(pool.quota)
        blocks = _blocks(topology, options, len(members), notes)
        pool_seats = _seat(members, blocks, {cpu.id: cpu.node for cpu in machine.cpus})
        seats.update(pool_seats)
        taken |= {core_of[cpu] for seat in pool_seats.values() for cpu in seat.block.cpus}
    return Assignment(_mark_shared(seats, core_of), tuple(notes))


def _blocks(
    topology: Topology, options: LauncherOptions, wanted: int, notes: list[str]
) -> tuple[Block, ...]:
    """The pool's blocks: the reserved layout, or one per worker, or as many as fit."""
    if is_reserved(options):
        return plan(topology, options, 0).blocks
    try:
        return plan(topology, options, wanted).blocks
    except LauncherError as error:
        # More workers than the pool can hold apart: the most blocks that do fit.
        for count in range(min(wanted - 1, len(topology.cpus)), 0, -1):
            try:
                blocks = plan(topology, options, count).blocks
            except LauncherError:
                continue
            notes.append(f"{wanted} workers, room for {count} disjoint blocks: {error}")
            return blocks
        raise


def _seat(
    members: Sequence[Demand], blocks: Sequence[Block], node_of: dict[int, int | None]
) -> dict[WorkerKey, Seat]:
    """Each worker, oldest first, to the free block overlapping most with what it holds,
    then with its first block (a worker that grew while another restarted shrinks back
    to where it was), then on the node it was on (its memory is there), then the lowest
    index; workers beyond the blocks share the block holding the fewest workers of their
    own model, then the least-loaded one (seen: after a 2 -> 1 -> 2 scale beside another
    model on 2 cores, both workers of the scaled model sat on core 0)."""
    if not blocks:
        raise LauncherError("no core block can be planned for these workers")
    sitting: dict[int, list[Demand]] = {block.index: [] for block in blocks}
    by_index = {block.index: block for block in blocks}
    free = [block.index for block in blocks]
    for demand in members:
        held = set(demand.holding)
        held_nodes = {node_of.get(cpu) for cpu in held}
        overlap = {i: len(held & set(block.cpus)) for i, block in by_index.items()}
        home = {i: len(set(demand.home) & set(block.cpus)) for i, block in by_index.items()}
        if free:
            best = max(free, key=lambda i: (overlap[i], home[i], by_index[i].node in held_nodes,
                                            -i))
            free.remove(best)
        else:  # a model's workers spread over blocks before two of them share one
            best = min(sitting, key=lambda i: (
                sum(d.model == demand.model for d in sitting[i]), len(sitting[i]), -overlap[i],
                i))
        sitting[best].append(demand)
    seats: dict[WorkerKey, Seat] = {}
    for index, group in sitting.items():
        block = by_index[index]
        for demand in group:  # a shared block divides its threads: never N x cores
            seats[demand.key] = Seat(block, max(1, block.threads // len(group)))
    return seats


def _mark_shared(
    seats: dict[WorkerKey, Seat], core_of: dict[int, CoreKey]
) -> dict[WorkerKey, Seat]:
    """Fill in `shared_with`: every other worker whose block has a physical core of this one
    (a CPU, or an SMT sibling of one)."""
    cores = {key: {core_of[cpu] for cpu in seat.block.cpus} for key, seat in seats.items()}
    return {
        key: replace(
            seat,
            shared_with=tuple(
                other for other in seats if other != key and cores[key] & cores[other]
            ),
        )
        for key, seat in seats.items()
    }
