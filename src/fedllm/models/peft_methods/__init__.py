"""PEFT methods (one module each): LoRA, DoRA, IA³, prompt tuning, P-tuning, prefix tuning."""

from fedllm.models.peft_methods import ia3, lora, prefix, prompt, ptuning  # noqa: F401  (register)
from fedllm.models.peft_methods.base import PEFT_METHODS, PeftMethod, register_peft_method
from fedllm.models.peft_methods.virtual import decoding_start, input_logits, virtual_tokens

__all__ = ["PEFT_METHODS", "PeftMethod", "decoding_start", "input_logits", "register_peft_method", "virtual_tokens"]
