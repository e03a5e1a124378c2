"""Inspect running TorchServe workers: where they run, with how many threads, which
allocator, and where their memory is. A problem (overlap, SMT sharing, a block across
nodes that would fit in one, more threads than cores, a worker not where the registry
seated it) makes the report fail."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.host import (
    CpuFacts,
    SysRoot,
    Topology,
    allowed_cpus,
    capabilities,
    environ,
    format_cpulist,
    numa_pages,
    read_topology,
    status_fields,
    this_cpu,
)
from torchserve_cpu.launcher.planning import (
    ALLOCATORS,
    PRELOAD_FIX,
    choose_allocator,
    mapped_allocator,
)
from torchserve_cpu.launcher.torchserve import Entry, read_entries, torchserve_workers

# the start-up variables that decide threads and memory, shown per worker
SHOWN_ENV = (
    "OMP_NUM_THREADS", "KMP_AFFINITY", "KMP_BLOCKTIME", "LD_PRELOAD",
    *dict.fromkeys(key for entry in ALLOCATORS for key in entry.env),
)


@dataclass(frozen=True)
class WorkerReport:
    pid: int
    frontend: int
    cpus: tuple[int, ...]
    threads: int  # intra-op threads the worker applied, else OMP_NUM_THREADS, else CPUs
    os_threads: int
    model: str
    env: dict[str, str] = field(hash=False)
    allocator: str = "unknown"  # as mapped in the process
    pages_per_node: dict[int, int] = field(default_factory=dict, hash=False)
    nodes: tuple[int, ...] = ()
    pending_threads: int | None = None  # re-balanced while idle: applied at its next batch
    logical_cores: bool = False  # --use_logical_core: one thread per CPU, not per core


@dataclass(frozen=True)
class Report:
    workers: tuple[WorkerReport, ...]
    problems: tuple[str, ...]  # within one TorchServe instance: exit code 1
    warnings: tuple[str, ...] = ()
    cpu: str = ""  # the ISA facts the handler's precision decision reads, as one line


def inspect(
    sys_root: SysRoot | None = None,
    entries: tuple[Entry, ...] | None = None,
    frontend: int | None = None,
) -> Report:
    """Report on every TorchServe worker on the host, or those of one frontend pid."""
    fs = sys_root or SysRoot()
    topology = read_topology(fs)
    node_of = topology.by_id()
    by_pid = {e.pid: e for e in (read_entries() if entries is None else entries)}
    workers = []
    for pid, owner in torchserve_workers(fs):
        if frontend is not None and owner.pid != frontend:
            continue
        try:
            cpus = allowed_cpus(pid, fs)
        except ProcessLookupError:
            continue
        started_with = environ(pid, fs) or {}
        env = {key: value for key, value in started_with.items() if key in SHOWN_ENV}
        status = status_fields(pid, fs) or {}
        entry = by_pid.get(pid)
        pending = None
        if entry is not None and entry.applied_threads is not None:
            threads = entry.applied_threads
            if entry.applied_threads != entry.threads:
                pending = entry.threads
        elif entry is not None:  # joined, not yet applied
            threads, pending = len(cpus), entry.threads
        elif env.get("OMP_NUM_THREADS", "").isdigit():
            threads = int(env["OMP_NUM_THREADS"])
        else:
            threads = len(cpus)
        workers.append(
            WorkerReport(
                pid=pid,
                frontend=owner.pid,
                cpus=cpus,
                threads=threads,
                os_threads=int(status.get("Threads", "0")),
                model=entry.model if entry else "?",
                env=env,
                allocator=mapped_allocator(pid, fs) or "unknown",
                pages_per_node=numa_pages(pid, fs),
                nodes=tuple(sorted({node_of[c].node for c in cpus
                                    if c in node_of and node_of[c].node is not None})),
                pending_threads=pending,
                logical_cores=bool(entry) and entry.pool.options.use_logical_core,
            )
        )
    found = problems(workers, topology, by_pid)
    frontends = sorted({w.frontend for w in workers})
    notes = [f"{len(frontends)} TorchServe instances share this host's registry"] if len(
        frontends) > 1 else []
    notes += sharing_notes(workers, by_pid)
    notes += allocator_hints(workers, by_pid)
    return Report(tuple(workers), tuple(found), tuple(notes), describe_cpu(this_cpu()))


def describe_cpu(cpu: CpuFacts) -> str:
    """What the handler's dtype decision reads of this CPU (handlers.optimize.precision)."""
    found = capabilities(cpu)
    int8 = (", ".join(found.int8_dot_flags) if found.fast_int8
            else "7-bit activations (AVX2, no VNNI)" if found.int8_saturating else "none")
    capped = (f" (ONEDNN_MAX_CPU_ISA={cpu.isa_cap} hides {', '.join(sorted(cpu.hidden))})"
              if cpu.hidden else "")
    return (f"{cpu.model or cpu.arch}: native bf16 {', '.join(found.bf16_flags) or 'none'}; "
            f"int8 dot products {int8}{capped}")


def allocator_hints(workers: list[WorkerReport], entries: dict[int, Entry]) -> list[str]:
    """Workers whose mapped allocator is not the one their launcher args ask for."""
    hints = []
    for worker in workers:
        entry = entries.get(worker.pid)
        if entry is None or worker.allocator == "unknown":
            continue
        try:
            wanted = choose_allocator(entry.pool.options).name
        except LauncherError as error:
            hints.append(f"pid {worker.pid}: {error}")
            continue
        if wanted != worker.allocator:
            hints.append(f"pid {worker.pid}: allocator {worker.allocator}, wanted {wanted}: "
                         f"it must be preloaded before the worker starts; {PRELOAD_FIX}")
    return hints


def problems(
    workers: list[WorkerReport], topology: Topology, entries: dict[int, Entry]
) -> list[str]:
    """What is wrong with these workers (of one or several TorchServe instances, which
    draw from one host-wide registry and so must not overlap either)."""
    found = []
    core_of = {cpu.id: cpu.core for cpu in topology.cpus}
    node_size: Counter[int | None] = Counter(cores[0].node for cores in topology.cores().values())
    for i, a in enumerate(workers):
        cores = {core_of[c] for c in a.cpus if c in core_of}
        room = len(a.cpus) if a.logical_cores else len(cores)
        if a.threads > room and a.pending_threads is None:
            found.append(f"pid {a.pid}: {a.threads} threads on {room} "
                         f"{'CPUs' if a.logical_cores else 'physical cores'}")
        if len(a.nodes) > 1 and len(cores) <= max(node_size.values()):
            found.append(f"pid {a.pid}: CPUs {format_cpulist(a.cpus)} span nodes {a.nodes}")
        entry = entries.get(a.pid)
        if entry is not None and set(entry.cpus) != set(a.cpus):
            found.append(
                f"pid {a.pid}: runs on {format_cpulist(a.cpus)}, registry says "
                f"{format_cpulist(entry.cpus)}"
            )
        for b in workers[i + 1 :]:
            shared = set(a.cpus) & set(b.cpus)
            if shared and arranged(entry, b.pid):
                continue  # sharing the user allowed: a note (sharing_notes), not a problem
            if shared:
                found.append(
                    f"pids {a.pid} and {b.pid} overlap on CPUs {format_cpulist(shared)} "
                    "(not seated together by the registry: pinned by hand, or a TorchServe "
                    "with another $TSCPU_REGISTRY_DIR)"
                )
                continue
            other = {core_of[c] for c in b.cpus if c in core_of}
            if cores & other:
                found.append(f"pids {a.pid} and {b.pid} share SMT siblings of one core")
    return found


def arranged(entry: Entry | None, other: int) -> bool:
    """The registry seated this worker with `other` because the user allows sharing
    (--oversubscribe share, the default) and there are more workers than core blocks."""
    return (entry is not None and other in entry.shared_with
            and entry.pool.options.oversubscribe == "share")


def sharing_notes(workers: list[WorkerReport], entries: dict[int, Entry]) -> list[str]:
    """Workers sharing CPUs as the registry arranged it: a fact to know, not a fault."""
    notes = []
    for i, a in enumerate(workers):
        for b in workers[i + 1 :]:
            shared = set(a.cpus) & set(b.cpus)
            if shared and arranged(entries.get(a.pid), b.pid):
                notes.append(
                    f"pids {a.pid} ({a.model}) and {b.pid} ({b.model}) share CPUs "
                    f"{format_cpulist(shared)}: more workers than core blocks, shared as "
                    "--oversubscribe share (the default) allows"
                )
    return notes


def render(report: Report) -> str:
    if not report.workers:
        return "no running TorchServe workers found"
    width = max(12, *(len(w.model) for w in report.workers))  # whole names: no cut
    lines = [
        f"{'pid':>8} {'frontend':>8} {'model':{width}} {'cpus':14} {'nodes':6} {'threads':>7} "
        f"{'os-thr':>6} {'allocator':9} local-memory  env"
    ]
    for w in report.workers:
        total = sum(w.pages_per_node.values())
        local = sum(n for node, n in w.pages_per_node.items() if node in w.nodes)
        locality = f"{100 * local / total:5.1f}%" if total and w.nodes else "    -"
        env = " ".join(f"{k}={v}" for k, v in w.env.items() if k != "LD_PRELOAD")
        threads = f"{w.threads}" + ("" if w.pending_threads is None else f">{w.pending_threads}")
        lines.append(
            f"{w.pid:>8} {w.frontend:>8} {w.model:{width}} {format_cpulist(w.cpus):14} "
            f"{','.join(map(str, w.nodes)) or '-':6} {threads:>7} {w.os_threads:>6} "
            f"{w.allocator:9} {locality:>12}  {env}"
        )
    if any(w.pending_threads is not None for w in report.workers):
        lines.append("threads a>b: re-balanced while idle; b applies before its next batch")
    if report.cpu:
        lines.append(f"cpu: {report.cpu}")
    lines += [f"note: {w}" for w in report.warnings]
    lines += [f"PROBLEM: {p}" for p in report.problems] or ["no problems found"]
    return "\n".join(lines)
