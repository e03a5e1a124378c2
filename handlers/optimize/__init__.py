"""Building the served model: the optimization vocabulary (steps, presets), choosing and
checking a pipeline against eager, int8, and loading an archive's AOTInductor package."""

from torchserve_cpu.handlers.optimize.accuracy import CLASSIFIER_GATE, compare
from torchserve_cpu.handlers.optimize.archive_inputs import check_inputs
from torchserve_cpu.handlers.optimize.ipex_support import IpexStatus, probe_ipex
from torchserve_cpu.handlers.optimize.optimizer import (
    ExampleInputError,
    Optimized,
    error_summary,
    optimize,
    plan_dtype,
    thresholds_for,
)
from torchserve_cpu.handlers.optimize.pipeline import PRESET_NAMES, STEPS, StepPlan
from torchserve_cpu.handlers.optimize.precision import Decision, decide
from torchserve_cpu.handlers.optimize.quantize import (
    ConvNetInt8,
    default_activation_bits,
    quantize_conv_net,
    quantize_dynamic,
)
from torchserve_cpu.handlers.optimize.steps import (
    has_convolutions,
    prepare_inputs,
    wants_channels_last,
)

__all__ = ["CLASSIFIER_GATE", "PRESET_NAMES", "STEPS", "ConvNetInt8", "Decision",
           "ExampleInputError", "IpexStatus", "Optimized", "StepPlan", "check_inputs", "compare",
           "decide", "default_activation_bits", "error_summary", "has_convolutions", "optimize",
           "plan_dtype", "prepare_inputs", "probe_ipex", "quantize_conv_net", "quantize_dynamic",
           "thresholds_for", "wants_channels_last"]
