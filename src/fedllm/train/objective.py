"""The objective API: how samples become token features and how a batch becomes a summed loss; the
registry objectives join with one decorator line, and SFT, the objective every other one extends.
Look objectives up through ``fedllm.train.objectives``, which imports (and so registers) them all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from fedllm.data.formatting import collate, encode_sft
from fedllm.data.schema import InstructionSample, Sample
from fedllm.models.peft_methods.virtual import input_logits, virtual_tokens
from fedllm.registry import Registry
from fedllm.train.cost import ModelShape, train_flops


def _backbone_and_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder, lm_head) of a causal LM (through peft), or None where that shortcut is not exact: the
    head has extra maths, or the adapter adds virtual tokens in ``PeftModel.forward`` (prompt learning)."""
    if virtual_tokens(model):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return None
    try:
        return base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None


def labelled_token_losses(model: Any, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Next-token cross-entropy at every labelled position (flat, fp32) and the mask that picks them.

    The LM head runs only on labelled positions (assistant tokens): with a 49k vocabulary this is a
    fifth of the forward pass that prompt tokens do not need.
    """
    shift = batch["labels"][:, 1:]
    mask = shift != -100
    parts = _backbone_and_head(model)
    if parts is None:
        logits = input_logits(model, batch["input_ids"], batch["attention_mask"])[:, :-1][mask]
    else:
        decoder, head = parts
        hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        logits = head(hidden[:, :-1][mask])
    return _token_cross_entropy(logits, shift[mask]), mask


CE_ROWS = 256  # labelled positions per cross-entropy chunk when no gradient is wanted


def _token_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of each row in fp32. Without a gradient it runs in chunks of rows: the same numbers row
    by row, without an fp32 copy of the whole [positions, vocabulary] logits (a third faster in evaluation)."""
    if (torch.is_grad_enabled() and logits.requires_grad) or len(targets) <= CE_ROWS:
        return F.cross_entropy(logits.float(), targets, reduction="none")
    return torch.cat([F.cross_entropy(logits[i:i + CE_ROWS].float(), targets[i:i + CE_ROWS], reduction="none")
                      for i in range(0, len(targets), CE_ROWS)])


def token_loss_sum(model: Any, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
    """Sum of next-token cross-entropy over labelled positions, and their count."""
    losses, mask = labelled_token_losses(model, batch)
    return losses.sum(), int(mask.sum())


class Objective:
    """How samples of one kind become features and how a batch becomes a summed loss. The trainer,
    the engine's cost accounting and evaluation ask the objective, never assume SFT."""

    name: ClassVar[str] = ""
    sample_type: ClassVar[type] = object
    #: whether exp(mean loss) is a perplexity (token-level losses)
    perplexity: ClassVar[bool] = True
    #: why a sample whose loss units were all cut by truncation is dropped
    truncated: ClassVar[str] = "no loss token left after truncation"
    #: the ``train.*`` settings passed to the constructor
    options: ClassVar[tuple[str, ...]] = ()

    def encode(self, sample: Sample, template: Any, tokenizer: Any, max_length: int) -> dict[str, Any]:
        raise NotImplementedError

    def unusable(self, sample: Sample) -> str | None:
        """Why ``sample`` cannot train before it is even encoded (None: it can)."""
        return None

    def collate(self, features: list[dict[str, Any]], pad_id: int) -> dict[str, Tensor]:
        raise NotImplementedError

    def loss_sum(self, model: Any, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        """(summed loss, number of loss units): the trainer divides by the units of a whole step."""
        raise NotImplementedError

    def loss_stats(self, model: Any, batch: dict[str, Tensor]) -> tuple[Tensor, int, dict[str, float]]:
        """``loss_sum`` plus statistics summed over the units (e.g. DPO's reward accuracy)."""
        loss, units = self.loss_sum(model, batch)
        return loss, units, {}

    def sample_sums(self, model: Any, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Per sample, shape [batch]: summed loss, loss units and summed statistics. Evaluation pools these
        by client, so one batch may mix clients, and compares two models sample by sample."""
        raise NotImplementedError(f"objective {self.name!r} has no per-sample sums")

    def begin_round(self, model: Any, features: list[dict[str, Any]], indices: list[int], pad_id: int,
                    precision: Any, batch_size: int) -> None:
        """Before a client's round of training on ``features[indices]`` (DPO: its reference log-probs)."""

    def begin_eval(self, model: Any, features: list[dict[str, Any]], pad_id: int, precision: Any,
                   batch_size: int) -> None:
        """Before evaluating ``features`` (DPO: the base model's log-probs, once: they never change)."""

    @staticmethod
    def length(feature: dict[str, Any]) -> int:
        return len(feature["input_ids"])

    @staticmethod
    def units(feature: dict[str, Any]) -> int:
        """Loss units a feature contributes (labelled tokens for SFT)."""
        return int(feature["num_trainable"])

    @staticmethod
    def labelled(feature: dict[str, Any]) -> int:
        """Tokens where the LM head runs (what the FLOPs estimate counts at 6·d·V)."""
        return int(feature["num_trainable"])

    @staticmethod
    def tokens(batch: dict[str, Tensor]) -> int:
        """Input tokens a batch processes (padding excluded)."""
        return int(batch["attention_mask"].sum())

    def flops(self, shape: ModelShape, tokens: int, labelled: int) -> float:
        """Estimated FLOPs of training on ``tokens`` input tokens, ``labelled`` of them under the head."""
        return train_flops(shape, tokens, labelled)


OBJECTIVES: Registry[type[Objective]] = Registry("objective")
"""Objective name -> class (filled by @register_objective at import time)."""


def register_objective(name: str) -> Callable[[type[Objective]], type[Objective]]:
    """Class decorator registering an objective under a unique lower-case `name` (sets ``cls.name``)."""
    return OBJECTIVES.register(name)


@register_objective("sft")
class SFT(Objective):
    """Supervised fine-tuning: cross-entropy on assistant tokens (EOS included), every assistant turn."""

    sample_type = InstructionSample

    def encode(self, sample: Sample, template: Any, tokenizer: Any, max_length: int) -> dict[str, Any]:
        return encode_sft(sample, template, tokenizer, max_length)

    def collate(self, features: list[dict[str, Any]], pad_id: int) -> dict[str, Tensor]:
        return collate(features, pad_id)

    def loss_sum(self, model: Any, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        return token_loss_sum(model, batch)

    def sample_sums(self, model: Any, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        losses, mask = labelled_token_losses(model, batch)
        rows = mask.nonzero()[:, 0]
        sums = torch.zeros(mask.shape[0], dtype=losses.dtype, device=losses.device).index_add_(0, rows, losses)
        return sums, mask.sum(1), {}


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
