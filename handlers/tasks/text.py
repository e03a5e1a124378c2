"""Text models: UTF-8 text (or JSON {"text": ...}) -> token ids -> logits or an embedding.

Classification answers as TorchServe's text_classifier does, `{label: probability}` for
every class in index order, or with `handler.response: detailed` as
`{"label", "logits", "probabilities"}`; embeddings as `{"embedding": [...]}`.

Sequences are padded to `max_length` so every batch has one shape: traced and compiled
graphs then never meet a shape they were not built for.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from torchserve_cpu.handlers.errors import BadInput
from torchserve_cpu.handlers.settings import HandlerSettings
from torchserve_cpu.handlers.tasks.labels import label, label_problem, read_labels, stock_answer

TEXT_TYPES = ("text/", "application/json", "application/octet-stream")


def request_text(body: object, content_type: str | None) -> str:
    """The text of a request: the raw UTF-8 body, or JSON "text"/"data", or a JSON string."""
    if content_type and not content_type.startswith(TEXT_TYPES):
        raise BadInput(f"unsupported content type {content_type!r}: send text or JSON", 415)
    if isinstance(body, (bytes, bytearray)):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as error:
            raise BadInput(f"body is not UTF-8 text: {error}") from None
        if body.lstrip().startswith(("{", '"')):
            try:
                body = json.loads(body)
            except ValueError as error:
                raise BadInput(f"body looks like JSON but does not parse: {error}") from None
    if isinstance(body, dict):
        body = body.get("text", body.get("data"))
    if not isinstance(body, str):
        raise BadInput('expected text, or JSON with a "text" string')
    if not body.strip():
        raise BadInput("empty text")
    return body


def load_tokenizer(path: Path):
    """A fast tokenizer from the archive's tokenizer.json (the `[text]` extra)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ImportError(
            "text archives need the tokenizers package: pip install 'torchserve-cpu[text]'"
        ) from None
    return Tokenizer.from_file(str(path))


class TextTask:
    tensor_inputs = False

    def __init__(self, settings: HandlerSettings, model_dir: Path) -> None:
        self.settings = settings
        self.embeds = settings.task == "text_embedding"
        self.classifies = not self.embeds
        self.tokenizer = load_tokenizer(model_dir / "tokenizer.json")
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.pad_id = self.tokenizer.token_to_id("[PAD]") or 0
        self.labels = read_labels(model_dir)

    def decode(self, body: object, content_type: str | None) -> list[int]:
        encoding = self.tokenizer.encode(request_text(body, content_type))
        ids = encoding.ids
        limit = self.settings.max_length
        if len(ids) > limit:
            if self.settings.truncation == "reject":
                raise BadInput(f"text is {len(ids)} tokens, over the limit of {limit}", 413)
            ids = ids[: limit - 1] + ids[-1:]  # keep the closing [SEP]
        return ids

    def collate(self, samples: list[list[int]]) -> tuple[torch.Tensor, ...]:
        length = self.settings.max_length
        input_ids = torch.full((len(samples), length), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(samples), length), dtype=torch.long)
        for row, ids in enumerate(samples):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
        return input_ids, attention, torch.zeros_like(input_ids)

    def example_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(0)
        length = self.settings.max_length
        vocab = self.tokenizer.get_vocab_size()
        samples = []
        for row in range(batch_size):
            used = max(2, length - 7 * row)  # different lengths exercise the mask
            samples.append(torch.randint(1000, vocab, (used,), generator=generator).tolist())
        return self.collate(samples)

    def answer(self, output: torch.Tensor, samples: list | None = None) -> list[object]:
        if self.embeds:
            return [{"embedding": row.tolist()} for row in output.float()]
        answers: list[object] = []
        logits = output.float()
        for row, probabilities in zip(logits, torch.softmax(logits, dim=1).tolist()):
            if self.settings.response == "stock":
                answers.append(stock_answer(probabilities, list(range(len(probabilities))),
                                            self.labels))
                continue
            answers.append({"label": label(self.labels, int(row.argmax())),
                            "logits": row.tolist(), "probabilities": probabilities})
        return answers

    def output_problems(self, output: torch.Tensor) -> list[str]:
        """A classifier's labels file against its classes; nothing to check for embeddings."""
        problem = None if self.embeds else label_problem(self.labels, int(output.shape[-1]))
        return [problem] if problem else []
