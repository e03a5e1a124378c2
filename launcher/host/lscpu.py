"""Read a saved `lscpu --parse=CPU,Core,Socket,Node` listing into a Topology.

lscpu's Core column is a machine-wide logical core id shared by SMT siblings, so the
core key is (socket, core). The Node column is empty on machines without NUMA
information; run_cpu crashed there (int('')), here such CPUs get node None.
"""

from __future__ import annotations

from pathlib import Path

from torchserve_cpu.launcher.errors import LauncherError
from torchserve_cpu.launcher.host.topology import Cpu, Topology

COLUMNS = ("CPU", "CORE", "SOCKET", "NODE")


def parse_lscpu(text: str, source: str = "lscpu") -> Topology:
    """Topology of an lscpu parse listing; columns may come in any order.

    A `# CPU,Core,Socket,Node` header line (lscpu prints it) sets the order; without
    one the order is CPU,Core,Socket,Node. Lines of offline CPUs (`lscpu -p -a`
    prints them with empty fields, or Y/N in an Online column) are skipped.
    """
    order = list(COLUMNS)
    cpus: list[Cpu] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            header = [name.strip().upper() for name in line.lstrip("#").split(",")]
            if "CPU" in header and "CORE" in header and all(n.isalpha() for n in header):
                order = header
            continue
        fields = dict(zip(order, (value.strip() for value in line.split(",")), strict=False))
        if fields.get("ONLINE", "Y").upper() == "N":
            continue
        try:
            cpu = _cpu(fields)
        except ValueError:
            raise LauncherError(
                f"{source}:{number}: cannot read {raw!r} as {','.join(order)}"
            ) from None
        if cpu is not None:
            cpus.append(cpu)
    if not cpus:
        raise LauncherError(f"{source}: no CPU lines (expected lscpu --parse=CPU,Core,Socket,Node)")
    nodes = tuple(sorted({cpu.node for cpu in cpus if cpu.node is not None}))
    return Topology(cpus=tuple(cpus), nodes=nodes, source=source)


def _cpu(fields: dict[str, str]) -> Cpu | None:
    if not fields.get("CORE"):  # offline CPU in `lscpu -p -a`
        return None
    cpu_id = int(fields["CPU"])
    socket = int(fields["SOCKET"]) if fields.get("SOCKET") else 0
    node = int(fields["NODE"]) if fields.get("NODE") else None
    return Cpu(id=cpu_id, core=(socket, int(fields["CORE"])), package=socket, node=node)


def read_lscpu(path: Path) -> Topology:
    """Topology of a saved lscpu listing file."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise LauncherError(f"--topology-file {path}: {error.strerror}") from None
    return parse_lscpu(text, source=str(path))
