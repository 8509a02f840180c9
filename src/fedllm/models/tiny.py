"""Tiny, randomly initialised tokenizer and Llama model for fast, offline tests.

The tokenizer is a byte-level BPE trained in memory on a small fixed corpus (English prose, chat
prompt words and Python code), so it needs no download, builds in milliseconds and gives the same
ids in every process. It carries a SmolLM2-style ChatML chat template. The model is a two-layer
Llama with tied embeddings, shaped like SmolLM2 but a few hundred thousand parameters in size.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

BOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (BOS_TOKEN, IM_START, EOS_TOKEN, PAD_TOKEN)
VOCAB_SIZE = 1000
DEFAULT_SYSTEM = "You are a helpful AI assistant."

# SmolLM2-Instruct's template with a shorter default system message.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_PROSE = """\
Below is an instruction that describes a task. Write a response that appropriately completes the request.
A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful,
detailed, and polite answers to the user's questions. You are a helpful AI assistant.
### Instruction:
### Response:
USER: What is the capital of France? ASSISTANT: The capital of France is Paris.
USER: Can you help me write a short poem about the sea? ASSISTANT: Of course! Here is a short poem.
Federated learning trains a shared model across many clients without moving their private data.
Each client fine-tunes a small adapter on its own samples, and the server averages the updates.
The weather today is sunny with a light breeze, and the temperature will reach twenty degrees.
Please summarize the following article in three sentences and list the most important points.
Translate the sentence into French, then explain the grammar of every word you have used.
The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore.
Machine learning models learn patterns from examples; larger models usually need more data.
Give me a recipe for a simple tomato soup with garlic, onions, olive oil, salt and pepper.
First, heat the oil in a large pot. Then add the onions and cook them until they are soft.
The history of the city goes back more than two thousand years, when it was a small village.
Why is the sky blue? Sunlight is scattered by the molecules of the air, and blue light the most.
How many days are there in a year? There are 365 days, or 366 days in a leap year.
Answer the question step by step and check your reasoning before giving the final answer.
I think that this is a good idea, but we should ask them what they would like to do first.
Thank you very much for your help! You're welcome, let me know if there is anything else.
system
You are a helpful AI assistant.
user
Hello! Hi there, how are you today?
assistant
Hello! I am fine, thank you. How can I help you?
user
Write a Python function that returns the sum of a list of numbers.
assistant
Here is a simple function:
It is one of the most common words, and people use it in many ways because it is easy to say.
What do you know about this? Yes, no, maybe: it depends on where, when and who you ask.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 20 42 100 1000 2024 3.14 0.5 -1 50% $10
"""

_CODE = '''\
import os
import math
from collections import defaultdict


def fibonacci(n: int) -> list[int]:
    """Return the first n Fibonacci numbers."""
    result = []
    a, b = 0, 1
    for _ in range(n):
        result.append(a)
        a, b = b, a + b
    return result


class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self, step=1):
        self.value += step
        return self.value


def read_lines(path):
    with open(path, "r", encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def is_prime(number):
    if number < 2:
        return False
    for i in range(2, int(math.sqrt(number)) + 1):
        if number % i == 0:
            return False
    return True


if __name__ == "__main__":
    counts = defaultdict(int)
    for word in "the cat and the dog".split():
        counts[word] += 1
    print(counts, fibonacci(10), is_prime(7))
    print(f"{len(counts)} words; path={os.getcwd()!r}")
'''

CORPUS = (_PROSE, _CODE)


def _train_bpe() -> Tokenizer:
    """Train the byte-level BPE on the built-in corpus (deterministic: fixed data, no randomness)."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat the corpus a few times so that frequent words merge ahead of one-off strings.
    tok.train_from_iterator([text for text in CORPUS for _ in range(3)], trainer=trainer)
    return tok


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A ~1,000-token byte-level BPE tokenizer with ChatML special tokens and chat template, built in memory."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe(),
        bos_token=BOS_TOKEN,
        unk_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START],
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast | None = None,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    initializer_range: float = 0.2,
) -> LlamaForCausalLM:
    """A randomly initialised fp32 Llama sized for `tokenizer`, seeded without touching the caller's RNG."""
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # wider than HF's 0.02: with tied 64-dim embeddings at 0.02 the logits cannot leave ~uniform,
        # so LoRA-only training could barely lower the loss in tests
        initializer_range=initializer_range,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def save_tiny(dirpath: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write the tiny model and tokenizer with save_pretrained so the Auto* classes load them from disk."""
    path = Path(dirpath)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer, seed=seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
