"""TorchServe's `pt2:` section of model-config.yaml, mapped onto our settings or refused.

TorchServe 0.12's BaseHandler.initialize reads three forms (ts/torch_handler/base_handler.py):

    pt2: {compile: {enable: true, backend: inductor, mode: ..., ...}}  # torch.compile kwargs
    pt2: {export: {aot_compile: true}}       # load a torch._export .so as the serialized file
    pt2: inductor   /   pt2: {backend: inductor, mode: ...}          # deprecated forms

Our handler replaces that initialize, so each key is honoured here or refused with a
ValueError naming it: `compile` becomes `handler.optimize: compile` with its options (or,
with `optimize: aot`, the options of the archive-time compile); `export.aot_compile`
becomes `handler.optimize: aot`. Nothing is silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType

from torchserve_cpu.handlers.settings import HandlerSettings

COMPILE_KEYS = ("enable", "backend", "mode", "fullgraph", "dynamic", "options")
DEPRECATED_KEYS = COMPILE_KEYS[1:]  # the old form: torch.compile kwargs at the top
#: torch.compile modes as inductor options (torch.compile takes mode or options, not
#: both, and the compile step always sets options: freezing)
MODES: dict[str, dict[str, object]] = {
    "default": {},
    "max-autotune": {"max_autotune": True},
    "max-autotune-no-cudagraphs": {"max_autotune": True},
}
#: handler.optimize values a `pt2.compile` section can apply to
COMPILES = ("compile", "auto", "aot")


def apply_pt2(settings: HandlerSettings, section: object,
              handler_section: Mapping[str, object] | None = None) -> HandlerSettings:
    """`settings` with what `section` (model-config.yaml's `pt2:`) asks for.

    `handler_section` tells whether `handler.optimize` was set explicitly: pt2 then
    must agree with it rather than override it."""
    if section is None:
        return settings
    explicit = "optimize" in (handler_section or {})
    if isinstance(section, str):  # deprecated: the backend's name
        return _compile(settings, {"enable": True, "backend": section}, "pt2", explicit)
    if not isinstance(section, Mapping):
        raise ValueError(f"pt2: expected a mapping or a backend name, got {section!r}")
    if "compile" in section or "export" in section:
        _check_keys("pt2", section, ("compile", "export"))
        compiled = settings
        if "compile" in section:
            compiled = _compile(settings, section["compile"], "pt2.compile", explicit)
        if "export" in section:  # with compile on, the two must agree as with handler:
            chosen = explicit or compiled.optimize != settings.optimize
            compiled = _export(compiled, section["export"], chosen)
        return compiled
    _check_keys("pt2", section, DEPRECATED_KEYS, also="compile, export")
    return _compile(settings, {"enable": True, **section}, "pt2", explicit)


def _check_keys(path: str, section: Mapping[str, object], known: tuple[str, ...],
                also: str = "") -> None:
    for key in section:
        if key not in known:
            keys = ", ".join(known) + (f", {also}" if also else "")
            raise ValueError(f"{path}.{key}: unknown key; keys are {keys}")


def _compile(settings: HandlerSettings, section: object, path: str,
             explicit: bool) -> HandlerSettings:
    if not isinstance(section, Mapping):
        raise ValueError(f"{path}: expected a mapping, got {section!r}")
    _check_keys(path, section, COMPILE_KEYS)
    enable = section.get("enable")
    if not isinstance(enable, bool):
        raise ValueError(f"{path}.enable: expected true or false, got {enable!r}")
    options = _options(section, path)
    kwargs: dict[str, object] = {}
    for key in ("fullgraph", "dynamic"):
        if key in section and not isinstance(section[key], bool):
            raise ValueError(f"{path}.{key}: expected true or false, got {section[key]!r}")
        if key in section:
            kwargs[key] = section[key]
    if not enable:
        return settings
    optimize = settings.optimize if explicit else "compile"
    if not (optimize in COMPILES or (isinstance(optimize, tuple) and "compile" in optimize)):
        raise ValueError(f"{path}.enable: true asks for torch.compile but handler.optimize is "
                         f"{optimize!r}; set handler.optimize to compile (or aot), or drop "
                         f"one of them")
    if optimize == "aot":
        # export always captures the whole graph, with a dynamic batch dimension
        if kwargs.get("fullgraph") is False:
            raise ValueError(f"{path}.fullgraph: false cannot apply to handler.optimize: aot "
                             f"(export captures the whole graph)")
        if "dynamic" in kwargs:
            raise ValueError(f"{path}.dynamic: does not apply to handler.optimize: aot (its "
                             f"batch dimension is dynamic, 1..handler.aot_max_batch)")
        kwargs = {}
    return replace(settings, optimize=optimize,
                   compile_options=MappingProxyType({**kwargs, "options": options}))


def _options(section: Mapping[str, object], path: str) -> dict[str, object]:
    """Inductor options from `backend`, `mode` and `options`."""
    backend = section.get("backend", "inductor")
    if backend != "inductor":
        raise ValueError(f"{path}.backend: {backend!r} is not supported; this handler "
                         f"compiles with inductor (the only backend its checks cover)")
    mode = section.get("mode", "default")
    if mode not in MODES:
        raise ValueError(f"{path}.mode: {mode!r} is not one of {', '.join(MODES)} "
                         f"(reduce-overhead is CUDA graphs)")
    options = section.get("options", {})
    if not isinstance(options, Mapping):
        raise ValueError(f"{path}.options: expected a mapping of inductor options, "
                         f"got {options!r}")
    from torch._inductor.config import get_config_copy

    known = get_config_copy()
    for key in options:
        if key not in known:
            raise ValueError(f"{path}.options.{key}: not an inductor option "
                             f"(torch._inductor.config)")
    return {**MODES[mode], **options}


def _export(settings: HandlerSettings, section: object, explicit: bool) -> HandlerSettings:
    if not isinstance(section, Mapping):
        raise ValueError(f"pt2.export: expected a mapping, got {section!r}")
    _check_keys("pt2.export", section, ("aot_compile",))
    aot = section.get("aot_compile")
    if not isinstance(aot, bool):
        raise ValueError(f"pt2.export.aot_compile: expected true or false, got {aot!r}")
    if not aot:
        return settings
    if explicit and settings.optimize != "aot":
        raise ValueError(f"pt2.export.aot_compile: true asks for the aot backend but "
                         f"handler.optimize is {settings.optimize!r}; set handler.optimize: "
                         f"aot, or drop one of them")
    return replace(settings, optimize="aot")
