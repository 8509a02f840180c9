"""The tiny tokenizer and model: determinism, special tokens, training step and save/load round-trip."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedllm.models.tiny import CHAT_TEMPLATE, build_tiny_model, build_tiny_tokenizer, save_tiny

TEXT = 'Hello! def is_prime(n):\n    return n > 1  # "the" café ✓'


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny"))


def test_tokenizer_is_fast_and_deterministic(tok):
    start = time.perf_counter()
    again = build_tiny_tokenizer()
    assert time.perf_counter() - start < 1.0
    assert again.get_vocab() == tok.get_vocab()
    assert again(TEXT)["input_ids"] == tok(TEXT)["input_ids"]


def test_tokenizer_special_tokens_and_vocab(tok):
    assert 900 <= len(tok) <= 1000
    assert (tok.bos_token, tok.unk_token, tok.eos_token, tok.pad_token) == (
        "<|endoftext|>",
        "<|endoftext|>",
        "<|im_end|>",
        "<|pad|>",
    )
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.convert_tokens_to_ids("<|im_start|>")}) == 4
    ids = tok("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and ids[-1] == tok.eos_token_id
    assert tok("a", add_special_tokens=True)["input_ids"] == tok("a", add_special_tokens=False)["input_ids"]


def test_tokenizer_round_trips_text_with_offsets(tok):
    assert tok.decode(tok(TEXT, add_special_tokens=False)["input_ids"]) == TEXT  # byte-level: any unicode survives
    ascii_text = TEXT.encode("ascii", "ignore").decode()
    enc = tok(ascii_text, add_special_tokens=False, return_offsets_mapping=True)
    assert "".join(ascii_text[a:b] for a, b in enc["offset_mapping"]) == ascii_text
    assert len(tok("def fibonacci(n):")["input_ids"]) <= 6  # code words from the corpus are merged


def test_chat_template_is_chatml(tok):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert tok.chat_template == CHAT_TEMPLATE
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>assistant\n"
    )
    with_system = [{"role": "system", "content": "Be terse."}, *msgs[:1]]
    assert tok.apply_chat_template(with_system, tokenize=False) == (
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )


def test_model_config_matches_tokenizer(tok):
    model = build_tiny_model(tok)
    cfg = model.config
    assert cfg.vocab_size == len(tok)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (2, 4, 2)


def test_model_init_is_seeded(tok):
    a, b, c = (build_tiny_model(tok, seed=s).state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.layers.0.self_attn.q_proj.weight"], c["model.layers.0.self_attn.q_proj.weight"])


def test_model_init_leaves_global_rng_alone(tok):
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    build_tiny_model(tok, seed=7)
    assert torch.equal(torch.rand(4), expected)


def test_forward_backward_with_labels(tok):
    model = build_tiny_model(tok).train()
    ids = torch.tensor([tok("Hello! How are you?<|im_end|>")["input_ids"]] * 2)
    labels = ids.clone()
    labels[:, :3] = -100
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    assert out.logits.shape == (2, ids.shape[1], len(tok))
    assert torch.isfinite(out.loss) and out.loss.item() > 0  # random init: not confident, not degenerate
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_save_load_round_trip(tok, saved):
    model = AutoModelForCausalLM.from_pretrained(saved)
    loaded_tok = AutoTokenizer.from_pretrained(saved)
    reference = build_tiny_model(tok)
    ref_state = reference.state_dict()
    assert all(torch.equal(v, ref_state[k]) for k, v in model.state_dict().items())
    assert loaded_tok(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
    assert loaded_tok.chat_template == tok.chat_template
    assert (loaded_tok.eos_token, loaded_tok.pad_token, loaded_tok.bos_token) == (
        tok.eos_token,
        tok.pad_token,
        tok.bos_token,
    )
    ids = torch.tensor([tok("Hello")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-6)
        gen = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert gen.shape == (1, ids.shape[1] + 3) or gen[0, -1].item() == tok.eos_token_id


def test_peft_lora_wraps_tiny_model(tok):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build_tiny_model(tok), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
