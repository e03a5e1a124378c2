import pytest

from torchserve_cpu.handlers.model_config import parse_settings
from torchserve_cpu.handlers.settings import GateThresholds, HandlerSettings


def test_defaults_when_section_missing() -> None:
    assert parse_settings(None) == HandlerSettings()


def test_full_section() -> None:
    settings = parse_settings({
        "task": "text_embedding", "optimize": ["native", "trace", "freeze"], "dtype": "bf16",
        "max_length": 64, "truncation": "reject", "emit_itt": True,
        "accuracy_gate": {"min_cosine": 0.995, "topk": 3},
    })
    assert settings.task == "text_embedding"
    assert settings.optimize == ("native", "trace", "freeze")
    assert settings.dtype == "bf16"
    assert settings.gate == GateThresholds(min_cosine=0.995, topk=3)
    assert settings.truncation == "reject" and settings.emit_itt


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"dtype": "fp16"}, "handler.dtype"),
        ({"optimize": "fastest"}, "handler.optimize"),
        ({"optimize": ["trace", "warp"]}, "handler.optimize"),
        ({"task": "speech"}, "handler.task"),
        ({"topk": 0}, "handler.topk"),
        ({"max_length": "long"}, "handler.max_length"),
        ({"emit_itt": "yes"}, "handler.emit_itt"),
        ({"accuracy_gate": {"cosine": 0.9}}, "handler.accuracy_gate.cosine"),
        ({"accuracy_gate": {"min_cosine": "high"}}, "handler.accuracy_gate.min_cosine"),
        ({"bogus": 1}, "handler.bogus"),
        ({"image_size": 300, "resize_size": 256}, "handler.resize_size"),
    ],
)
def test_bad_values_name_the_key(section: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        parse_settings(section)


def test_section_must_be_mapping() -> None:
    with pytest.raises(ValueError, match="handler: expected a mapping"):
        parse_settings(["task"])  # type: ignore[arg-type]


def test_make_task_names_the_key_and_choices_for_an_unknown_task(tmp_path) -> None:
    from torchserve_cpu.handlers.tasks import TASKS, make_task

    with pytest.raises(ValueError, match=r"handler\.task: 'speech' is not one of ") as error:
        make_task(HandlerSettings(task="speech"), tmp_path)
    assert all(name in str(error.value) for name in TASKS)


def test_mean_and_std_are_per_channel_pixel_values() -> None:
    assert (HandlerSettings().mean, HandlerSettings().std) == \
        ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))  # ImageNet's
    settings = parse_settings({"mean": [127, 127, 127], "std": [128, 128.0, 128]})
    assert (settings.mean, settings.std) == ((127.0,) * 3, (128.0,) * 3)
    for section, message in (({"mean": [1, 2]}, r"handler\.mean: expected three numbers"),
                             ({"std": "imagenet"}, r"handler\.std: expected three numbers"),
                             ({"mean": [1, True, 2]}, r"handler\.mean"),
                             ({"std": [0.229, 0.224, 0.225]}, r"handler\.std: .* 0\.\.1 scale")):
        with pytest.raises(ValueError, match=message):
            parse_settings(section)


def test_every_mistake_is_named_at_once_with_a_did_you_mean() -> None:
    from torchserve_cpu.handlers.settings import HANDLER_KEYS, SettingsError

    with pytest.raises(SettingsError) as caught:
        parse_settings({"toopk": 3, "dtype": "bf61", "response": "stok", "task": "tensr",
                        "topk": 2})
    assert caught.value.problems == (
        "handler.toopk: unknown key; did you mean topk?; keys are " + ", ".join(HANDLER_KEYS),
        "handler.dtype: 'bf61' is not one of fp32, bf16, int8, auto; did you mean bf16?",
        "handler.response: 'stok' is not one of stock, detailed; did you mean stock?",
        "handler.task: 'tensr' is not one of image_classification, text_classification, "
        "text_embedding, tensor; did you mean tensor?",
    )
    assert str(caught.value).count("\n") == 3


def test_response_and_tensor_keys() -> None:
    settings = parse_settings({"response": "detailed", "task": "tensor", "input_shape": [3, 4],
                               "input_dtype": "int64"})
    assert (settings.response, settings.input_shape, settings.input_dtype) == \
        ("detailed", (3, 4), "int64")
    assert parse_settings(None).response == "stock"
