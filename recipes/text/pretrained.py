"""Fine-tuning a pretrained transformers sequence classifier (`--model_name_or_path`); transformers is optional."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from framework import FlagError


def _transformers():
    try:
        import transformers
    except ImportError:
        raise FlagError("model_name_or_path", "needs the transformers package (pip install transformers)") from None
    return transformers


def _from_pretrained(loader, name: str, **kwargs):
    try:
        return loader.from_pretrained(name, **kwargs)
    except OSError as err:
        raise FlagError("model_name_or_path", f"{name!r} could not be loaded: {str(err).splitlines()[0]}") from None


def load_tokenizer(name: str):
    """The tokenizer of a pretrained model (Hub name or folder; transformers), or a one-line error."""
    return _from_pretrained(_transformers().AutoTokenizer, name)


def load_pretrained_classifier(name: str, num_classes: int) -> nn.Module:
    """The pretrained model `name` with a fresh `num_classes` head."""
    model = _from_pretrained(_transformers().AutoModelForSequenceClassification, name, num_labels=num_classes,
                             ignore_mismatched_sizes=True)
    return PretrainedClassifier(model)


class PretrainedClassifier(nn.Module):
    """A transformers sequence classifier called with the batch's inputs, returning its logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**inputs).logits


def save_in_transformers_layout(model: "PretrainedClassifier", class_names: list[str], folder: Path) -> None:
    """Write the fine-tuned model as transformers expects it (config.json with the class names as id2label,
    unprefixed weights), so AutoModelForSequenceClassification loads the folder. Called on the main process
    after the run wrote its whole weights to folder/model.safetensors: those are renamed (this wrapper's
    `model.` prefix dropped), so it works on any number of processes, FSDP included, where no process holds the
    whole model (the model's own save_pretrained would read its sharded parameters)."""
    from safetensors.torch import load_file, save_file

    from framework import WEIGHTS_FILE

    inner = model.model
    inner.config.id2label = dict(enumerate(class_names))
    inner.config.label2id = {name: i for i, name in enumerate(class_names)}
    inner.config.save_pretrained(str(folder))
    weights = load_file(str(folder / WEIGHTS_FILE))
    prefix = "model."
    renamed = {name[len(prefix):]: tensor for name, tensor in weights.items() if name.startswith(prefix)}
    temporary = folder / f".tmp_{WEIGHTS_FILE}"
    save_file(renamed, str(temporary), metadata={"format": "pt"})  # transformers reads the format
    temporary.replace(folder / WEIGHTS_FILE)  # the same weights, transformers' names
