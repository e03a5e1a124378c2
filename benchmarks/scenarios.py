"""The scenario matrix as data: who handles requests, who places workers, which allocator.

Each scenario changes one thing over the one before it, so neighbouring rows of the summary
explain each other: stock -> threads -> TorchServe's launcher / our pinning -> allocator ->
optimized model -> compile / bf16.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

HANDLER_STOCK = "stock"  # benchmarks/stock_handler.py: BaseHandler, eager, no pinning
HANDLER_OURS = "ours"  # handlers/: pins its worker, optimizes its model

LAUNCH_NONE = "none"  # plain `torchserve --start`
LAUNCH_TORCHSERVE = "torchserve"  # cpu_launcher_enable=true handled by TorchServe (run_cpu)
LAUNCH_OURS = "ours"  # our launcher's environment + our pinning handler



@dataclass(frozen=True)
class Scenario:
    name: str
    handler: str
    launch: str
    #: run_cpu vocabulary for cpu_launcher_args ("" = the launcher's own default)
    launcher_args: str = ""
    #: merged into the `handler:` section of model-config.yaml (our handler only)
    handler_overrides: Mapping[str, object] = field(default_factory=dict)
    #: stock handler calls torch.set_num_threads(cores / workers)
    set_threads: bool = False
    #: start TorchServe with no model and register it through the management API
    register_later: bool = False
    note: str = ""

    @property
    def dtype(self) -> str:
        return str(self.handler_overrides.get("dtype", "fp32"))


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("stock", HANDLER_STOCK, LAUNCH_NONE,
                 note="BaseHandler, eager fp32, default threads: every worker uses all cores"),
        Scenario("threads", HANDLER_STOCK, LAUNCH_NONE, set_threads=True,
                 note="stock + torch.set_num_threads(cores / workers), no pinning"),
        Scenario("torchserve-launcher", HANDLER_STOCK, LAUNCH_TORCHSERVE,
                 note="TorchServe's own cpu_launcher_enable=true (run_cpu), stock handler"),
        Scenario("pinned", HANDLER_OURS, LAUNCH_OURS, "--use_default_allocator",
                 {"optimize": "eager"}, note="our launcher: disjoint physical-core blocks"),
        Scenario("pinned+jemalloc", HANDLER_OURS, LAUNCH_OURS, "--enable_jemalloc",
                 {"optimize": "eager"}),
        Scenario("pinned+tcmalloc", HANDLER_OURS, LAUNCH_OURS, "--enable_tcmalloc",
                 {"optimize": "eager"}),
        Scenario("optimized", HANDLER_OURS, LAUNCH_OURS, "",
                 {"optimize": "default"}, note="our handler's default pipeline"),
        Scenario("optimized-dynamic", HANDLER_OURS, LAUNCH_OURS, "",
                 {"optimize": "default"}, register_later=True,
                 note="optimized, registered through the management API after start"),
        Scenario("optimized-compile", HANDLER_OURS, LAUNCH_OURS, "",
                 {"optimize": "compile"}),
        Scenario("optimized-bf16", HANDLER_OURS, LAUNCH_OURS, "",
                 {"optimize": "default", "dtype": "bf16"},
                 note="bf16 only where the handler's accuracy gate passes"),
        Scenario("optimized-compile-bf16", HANDLER_OURS, LAUNCH_OURS, "",
                 {"optimize": "compile", "dtype": "bf16"},
                 note="torch.compile under bf16 autocast, behind the same accuracy gate"),
        Scenario("optimized-int8", HANDLER_OURS, LAUNCH_OURS, "",
                 {"optimize": "default", "dtype": "int8"},
                 note="int8 (handlers/optimize/quantize.py) only where the accuracy gate passes"),
        Scenario("optimized-int8-speed-only", HANDLER_OURS, LAUNCH_OURS, "",
                 {"optimize": "default", "dtype": "int8", "accuracy_gate": False},
                 note="speed only: int8 with the accuracy gate off"),
        Scenario("optimized-auto", HANDLER_OURS, LAUNCH_OURS, "",
                 {"optimize": "default", "dtype": "auto"},
                 note="dtype: auto: the first precision this CPU runs fastest that passes, "
                      "timed against fp32"),
        Scenario("optimized-aot", HANDLER_OURS, LAUNCH_OURS, "", {"optimize": "aot"},
                 note="AOTInductor package compiled at archive time; the worker only loads it"),
        Scenario("optimized-aot-bf16", HANDLER_OURS, LAUNCH_OURS, "",
                 {"optimize": "aot", "dtype": "bf16"},
                 note="aot with bf16 inside the graph, behind the same accuracy gate"),
        Scenario("optimized-aot-int8", HANDLER_OURS, LAUNCH_OURS, "",
                 {"optimize": "aot", "dtype": "int8"},
                 note="aot int8 package (PT2E, calibrated and gated at archive time)"),
        Scenario("optimized-aot-auto", HANDLER_OURS, LAUNCH_OURS, "",
                 {"optimize": "aot", "dtype": "auto"},
                 note="aot packages of every precision this CPU runs; the worker loads and "
                      "times them"),
    )
}

BASELINE = "stock"
TORCHSERVE_LAUNCHER = "torchserve-launcher"


def select(names: Sequence[str] | None) -> list[Scenario]:
    """Scenarios by name in matrix order; raises ValueError naming the valid ones."""
    if not names:
        return list(SCENARIOS.values())
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    return [s for s in SCENARIOS.values() if s.name in names]
