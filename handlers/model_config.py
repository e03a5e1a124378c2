"""model-config.yaml -> checked `HandlerSettings`: the one reader of a config's `handler:` and
`pt2:` sections, for the worker (handlers.served_model) and the archive side
(handlers.archive.aot_build) alike, checked against the real task, step and preset names."""

from __future__ import annotations

from collections.abc import Mapping

from torchserve_cpu.handlers.optimize import PRESET_NAMES, STEPS
from torchserve_cpu.handlers.pt2_section import apply_pt2
from torchserve_cpu.handlers.settings import HandlerSettings, Vocabulary, parse_handler_section
from torchserve_cpu.handlers.tasks import TASKS

VOCABULARY = Vocabulary(tasks=tuple(TASKS), steps=tuple(STEPS), presets=PRESET_NAMES)


def parse_settings(section: Mapping[str, object] | None) -> HandlerSettings:
    """Checked settings from the `handler:` mapping alone (None: all defaults)."""
    return parse_handler_section(section, VOCABULARY)


def settings_from_sections(handler: Mapping[str, object] | None,
                           pt2: object = None) -> HandlerSettings:
    """The `handler:` section with the `pt2:` section mapped onto it (or refused)."""
    return apply_pt2(parse_settings(handler), pt2, handler)


def settings_from_config(config: Mapping[str, object]) -> HandlerSettings:
    """The settings of a whole model-config.yaml mapping."""
    return settings_from_sections(config.get("handler"), config.get("pt2"))  # type: ignore[arg-type]
