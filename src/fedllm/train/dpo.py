"""DPO (Rafailov et al. 2023), sigmoid form: −log σ(β·[(π_c − ref_c) − (π_r − ref_r)]) per preference
pair, with π and ref the log-probabilities summed over the completion tokens of the chosen (c) and
rejected (r) replies under the policy and the reference.

Pairs go through the same template and offsets code as SFT (``encode_preference``): the prompt
through the chat template, each reply as the assistant turn, the loss mask on the reply and its
closing token. Chosen and rejected run as one concatenated batch, and the LM head runs only on
completion tokens, as for SFT.

The reference is the base model with the adapter disabled (FedLLM-Bench's semantics, its TRL 0.7.2),
or ``round_start``: the adapter as the round began, i.e. the global adapter the client received
(what TRL ≥ 1.0 does when given a PeftModel, copying the adapter into a "ref" adapter). Either way
no second copy of the model is kept: the reference log-probs of a round's pairs are computed once,
in eval mode and without gradients, before the first step. Held-out evaluation uses the base.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fedllm.data.formatting import PREFERENCE_KEYS, collate, encode_preference
from fedllm.data.schema import PreferenceSample, Sample
from fedllm.train.cost import ModelShape
from fedllm.train.objective import Objective, labelled_token_losses, register_objective, to_device

Reference = Literal["base", "round_start"]


def sequence_logps(model: Any, batch: dict[str, Tensor]) -> Tensor:
    """log p(reply | prompt) of each row, summed over its labelled tokens (fp32; a row's per-token
    log-probs are summed along the sequence, in the order TRL sums them)."""
    losses, mask = labelled_token_losses(model, batch)
    per_token = torch.zeros(mask.shape, dtype=losses.dtype, device=losses.device).masked_scatter(mask, -losses)
    return per_token.sum(dim=1)


def pair_batch(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Chosen rows then rejected rows, as one causal-LM batch (both sides share one padded width)."""
    return {key: torch.cat([batch[f"chosen_{key}"], batch[f"rejected_{key}"]])
            for key in ("input_ids", "attention_mask", "labels")}


def _reward_stats(chosen: Tensor, rejected: Tensor) -> dict[str, Tensor]:
    """Per pair: whether the chosen reply earns the higher reward, both rewards and their margin."""
    c, r = chosen.detach(), rejected.detach()
    return {"reward_accuracy": (c > r).float(), "chosen_reward": c, "rejected_reward": r, "margin": c - r}


@register_objective("dpo")
class DPO(Objective):
    """β (default 0.1, TRL's and FedLLM-Bench's) scales the implicit reward r = β·(π − ref)."""

    sample_type = PreferenceSample
    perplexity = False
    options = ("beta", "reference")
    truncated = "no completion token left after truncation"

    def __init__(self, beta: float = 0.1, reference: Reference = "base") -> None:
        if not beta > 0:
            raise ValueError(f"DPO's beta must be positive, got {beta}")
        if reference not in ("base", "round_start"):
            raise ValueError(f"DPO's reference must be 'base' or 'round_start', got {reference!r}")
        self.beta = beta
        self.reference = reference

    # ----- features
    def unusable(self, sample: Sample) -> str | None:
        assert isinstance(sample, PreferenceSample)
        if not sample.chosen.strip() or not sample.rejected.strip():
            return "empty chosen or rejected reply"
        if sample.chosen.strip() == sample.rejected.strip():
            return "chosen and rejected are the same text"
        return None

    def encode(self, sample: Sample, template: Any, tokenizer: Any, max_length: int) -> dict[str, Any]:
        f: dict[str, Any] = encode_preference(sample, template, tokenizer, max_length)
        chosen = sum(label != -100 for label in f["chosen_labels"])
        rejected = sum(label != -100 for label in f["rejected_labels"])
        f["num_trainable"] = chosen + rejected
        f["pairs"] = int(chosen > 0 and rejected > 0)
        return f

    @staticmethod
    def units(feature: dict[str, Any]) -> int:
        """One per pair (zero where truncation left a side without a completion token)."""
        return int(feature["pairs"])

    @staticmethod
    def length(feature: dict[str, Any]) -> int:
        return max(len(feature["chosen_input_ids"]), len(feature["rejected_input_ids"]))

    @staticmethod
    def tokens(batch: dict[str, Tensor]) -> int:
        return int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())

    def collate(self, features: list[dict[str, Any]], pad_id: int) -> dict[str, Tensor]:
        batch = collate(features, pad_id, PREFERENCE_KEYS)
        if all("ref_logps" in f for f in features):
            ref = torch.tensor([f["ref_logps"] for f in features], dtype=torch.float32)
            batch["ref_chosen_logps"], batch["ref_rejected_logps"] = ref[:, 0], ref[:, 1]
        return batch

    def flops(self, shape: ModelShape, tokens: int, labelled: int) -> float:
        """The policy's forward and backward on both replies, plus the reference's forward (without
        the adapter for the base reference)."""
        policy = 4 * shape.body_params * tokens + 6 * shape.adapter_params * tokens + 6 * shape.head_params * labelled
        ref_adapter = shape.adapter_params if self.reference == "round_start" else 0
        reference = 2 * (shape.body_params + ref_adapter) * tokens + 2 * shape.head_params * labelled
        return float(policy + reference)

    # ----- the reference
    @torch.no_grad()
    def reference_logps(self, model: Any, batch: dict[str, Tensor], base: bool = False) -> tuple[Tensor, Tensor]:
        """(chosen, rejected) reference log-probs of a collated batch, in eval mode."""
        was_training = model.training
        model.eval()
        ctx = model.disable_adapter() if (base or self.reference == "base") and hasattr(model, "disable_adapter") \
            else nullcontext()
        try:
            with ctx:
                logps = sequence_logps(model, pair_batch(batch))
        finally:
            model.train(was_training)
        return logps.chunk(2)

    def begin_round(self, model: Any, features: list[dict[str, Any]], indices: list[int], pad_id: int,
                    precision: Any, batch_size: int) -> None:
        """Reference log-probs of every pair the round will use, once, before the adapter moves."""
        self._store_reference(model, features, sorted(set(indices)), pad_id, precision, batch_size, base=False)

    def begin_eval(self, model: Any, features: list[dict[str, Any]], pad_id: int, precision: Any,
                   batch_size: int) -> None:
        """The base model's log-probs of held-out pairs that lack them (computed at the first evaluation)."""
        todo = [i for i, f in enumerate(features) if "ref_logps" not in f]
        self._store_reference(model, features, todo, pad_id, precision, batch_size, base=True)

    def _store_reference(self, model: Any, features: list[dict[str, Any]], indices: list[int], pad_id: int,
                         precision: Any, batch_size: int, base: bool) -> None:
        order = sorted(indices, key=lambda i: self.length(features[i]))
        for j in range(0, len(order), max(batch_size, 1)):
            chunk = order[j:j + batch_size]
            batch = to_device(collate([features[i] for i in chunk], pad_id, PREFERENCE_KEYS), precision.device)
            with precision.autocast():
                chosen, rejected = self.reference_logps(model, batch, base=base)
            for i, c, r in zip(chunk, chosen.tolist(), rejected.tolist()):
                features[i]["ref_logps"] = (c, r)

    # ----- the loss
    def _pair_losses(self, model: Any, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Per pair: the DPO loss, the chosen reward and the rejected reward."""
        if "ref_chosen_logps" in batch:
            ref_c, ref_r = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        else:  # evaluation: the base model is the reference
            ref_c, ref_r = self.reference_logps(model, batch, base=True)
        policy_c, policy_r = sequence_logps(model, pair_batch(batch)).chunk(2)
        chosen_rewards = self.beta * (policy_c - ref_c)
        rejected_rewards = self.beta * (policy_r - ref_r)
        return -F.logsigmoid(chosen_rewards - rejected_rewards), chosen_rewards, rejected_rewards

    def sample_sums(self, model: Any, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        losses, c, r = self._pair_losses(model, batch)
        return losses, torch.ones_like(losses), _reward_stats(c, r)

    def loss_stats(self, model: Any, batch: dict[str, Tensor]) -> tuple[Tensor, int, dict[str, float]]:
        """Summed DPO loss over the pairs, their count, and reward statistics summed over them."""
        losses, chosen_rewards, rejected_rewards = self._pair_losses(model, batch)
        stats = {k: float(v.sum()) for k, v in _reward_stats(chosen_rewards, rejected_rewards).items()}
        return losses.sum(), int(losses.numel()), stats

    def loss_sum(self, model: Any, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        loss, units, _ = self.loss_stats(model, batch)
        return loss, units
