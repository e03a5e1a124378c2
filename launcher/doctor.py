"""Inspect running TorchServe workers: where they run, with how many threads, which
allocator, and where their memory is. A problem (overlap, SMT sharing, a block across
nodes that would fit in one, more threads than cores) makes the report fail."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from launcher.cpulist import format_cpulist
from launcher.procfs import mapped_allocator, torchserve_workers
from launcher.registry import Claim, all_claims
from launcher.sysfs import SysRoot, process_affinity, read_topology
from launcher.topology import Topology

OMP_KEYS = ("OMP_NUM_THREADS", "KMP_AFFINITY", "KMP_BLOCKTIME", "LD_PRELOAD", "MALLOC_CONF")


@dataclass(frozen=True)
class WorkerReport:
    pid: int
    frontend: int
    cpus: tuple[int, ...]
    threads: int  # OpenMP threads: the registry's block size, else OMP_NUM_THREADS, else CPUs
    os_threads: int
    model: str
    env: dict[str, str] = field(hash=False)
    allocator: str = "glibc"
    pages_per_node: dict[int, int] = field(default_factory=dict, hash=False)
    nodes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Report:
    workers: tuple[WorkerReport, ...]
    problems: tuple[str, ...]  # within one TorchServe instance: exit code 1
    warnings: tuple[str, ...] = ()  # between instances, each planned on its own


def environ_of(pid: int, fs: SysRoot) -> dict[str, str]:
    """The environment a process started with (later changes are not visible)."""
    try:
        raw = (fs.root / f"proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs if key in OMP_KEYS}


def numa_pages(pid: int, fs: SysRoot) -> dict[int, int]:
    """Resident pages per node summed over /proc/<pid>/numa_maps (N<node>=<pages>)."""
    pages: Counter[int] = Counter()
    for line in (fs.read(f"proc/{pid}/numa_maps") or "").splitlines():
        for token in line.split():
            if token.startswith("N") and "=" in token and token[1:].split("=")[0].isdigit():
                node, count = token[1:].split("=")
                pages[int(node)] += int(count)
    return dict(pages)


def _status_threads(pid: int, fs: SysRoot) -> int:
    for line in (fs.read(f"proc/{pid}/status") or "").splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def inspect(
    sys_root: SysRoot | None = None,
    claims: list[Claim] | None = None,
    frontend: int | None = None,
) -> Report:
    """Report on every TorchServe worker on the host, or those of one frontend pid."""
    fs = sys_root or SysRoot()
    topology = read_topology(fs)
    by_pid = {c.pid: c for c in (all_claims() if claims is None else claims)}
    workers = []
    for pid, owner in torchserve_workers(fs):
        if frontend is not None and owner.pid != frontend:
            continue
        try:
            cpus = process_affinity(pid, fs)
        except ProcessLookupError:
            continue
        env = environ_of(pid, fs)
        claim = by_pid.get(pid)
        if claim is not None:
            threads = len(claim.cpus)
        elif env.get("OMP_NUM_THREADS", "").isdigit():
            threads = int(env["OMP_NUM_THREADS"])
        else:
            threads = len(cpus)
        node_of = topology.by_id()
        workers.append(
            WorkerReport(
                pid=pid,
                frontend=owner.pid,
                cpus=cpus,
                threads=threads,
                os_threads=_status_threads(pid, fs),
                model=claim.model if claim else "?",
                env=env,
                allocator=mapped_allocator(pid, fs),
                pages_per_node=numa_pages(pid, fs),
                nodes=tuple(
                    sorted(
                        {
                            node_of[c].node
                            for c in cpus
                            if c in node_of and node_of[c].node is not None
                        }
                    )
                ),
            )
        )
    found, between = [], []
    for owner in sorted({w.frontend for w in workers}):
        found += problems([w for w in workers if w.frontend == owner], topology, by_pid)
    for a in workers:
        for b in workers:
            if a.frontend < b.frontend and set(a.cpus) & set(b.cpus):
                between.append(
                    f"pid {a.pid} (TorchServe {a.frontend}) and pid {b.pid} (TorchServe "
                    f"{b.frontend}) share CPUs {format_cpulist(set(a.cpus) & set(b.cpus))}"
                )
    return Report(tuple(workers), tuple(found), tuple(between))


def problems(
    workers: list[WorkerReport], topology: Topology, claims: dict[int, Claim]
) -> list[str]:
    found = []
    core_of = {cpu.id: cpu.core for cpu in topology.cpus}
    node_size: Counter[int | None] = Counter(cores[0].node for cores in topology.cores().values())
    for i, a in enumerate(workers):
        cores = {core_of[c] for c in a.cpus if c in core_of}
        if a.threads > len(cores):
            found.append(f"pid {a.pid}: {a.threads} threads on {len(cores)} physical cores")
        if len(a.nodes) > 1 and len(cores) <= max(node_size.values()):
            found.append(f"pid {a.pid}: CPUs {format_cpulist(a.cpus)} span nodes {a.nodes}")
        claim = claims.get(a.pid)
        if claim is not None and set(claim.cpus) != set(a.cpus):
            found.append(
                f"pid {a.pid}: runs on {format_cpulist(a.cpus)}, registry says "
                f"{format_cpulist(claim.cpus)}"
            )
        for b in workers[i + 1 :]:
            shared = set(a.cpus) & set(b.cpus)
            if shared:
                found.append(f"pids {a.pid} and {b.pid} overlap on CPUs {format_cpulist(shared)}")
                continue
            other = {core_of[c] for c in b.cpus if c in core_of}
            if cores & other:
                found.append(f"pids {a.pid} and {b.pid} share SMT siblings of one core")
    return found


def render(report: Report) -> str:
    if not report.workers:
        return "no running TorchServe workers found"
    lines = [
        f"{'pid':>8} {'frontend':>8} {'model':12} {'cpus':14} {'nodes':6} {'threads':>7} "
        f"{'os-thr':>6} {'allocator':9} local-memory  env"
    ]
    for w in report.workers:
        total = sum(w.pages_per_node.values())
        local = sum(n for node, n in w.pages_per_node.items() if node in w.nodes)
        locality = f"{100 * local / total:5.1f}%" if total and w.nodes else "    -"
        env = " ".join(f"{k}={v}" for k, v in w.env.items() if k != "LD_PRELOAD")
        lines.append(
            f"{w.pid:>8} {w.frontend:>8} {w.model[:12]:12} {format_cpulist(w.cpus):14} "
            f"{','.join(map(str, w.nodes)) or '-':6} {w.threads:>7} {w.os_threads:>6} "
            f"{w.allocator:9} {locality:>12}  {env}"
        )
    lines += [f"warning: {w}" for w in report.warnings]
    lines += [f"PROBLEM: {p}" for p in report.problems] or ["no problems found"]
    return "\n".join(lines)
