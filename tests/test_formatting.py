"""Templates, loss masks, truncation, preference encoding and collation on the tiny tokenizer."""

from __future__ import annotations

import pytest
import torch
from tokenizers import processors

from fedllm.data.formatting import (
    IGNORE_INDEX,
    PREFERENCE_KEYS,
    TEMPLATES,
    Segment,
    Template,
    TemplateError,
    collate,
    encode_preference,
    encode_sft,
    get_template,
    prompt_text,
)
from fedllm.data.schema import InstructionSample, Message, PreferenceSample
from fedllm.models.tiny import build_tiny_tokenizer

EOS = "<|im_end|>"
NAMES = sorted(TEMPLATES)

SINGLE = InstructionSample.single_turn("What is the capital of France?", "The capital of France is Paris.")
MULTI = InstructionSample(
    (
        Message("system", "Be brief."),
        Message("user", "Hello!"),
        Message("assistant", "Hi there."),
        Message("user", "Write a function."),
        Message("assistant", "def f(x):\n    return x"),
        Message("user", "Thanks"),
        Message("assistant", "You are welcome!"),
    )
)
PAIR = PreferenceSample(
    (Message("user", "Hello!"), Message("assistant", "Hi there."), Message("user", "How are you today?")),
    chosen="I am fine, thank you.",
    rejected="No.",
)


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def labelled_runs(tok, labels: list[int], name: str = "chat") -> list[str]:
    """Decoded maximal runs of trained tokens; vicuna's first reply token may carry the separator space."""
    runs: list[list[int]] = []
    prev = IGNORE_INDEX
    for label in labels:
        if label != IGNORE_INDEX:
            if prev == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        prev = label
    texts = [tok.decode(run) for run in runs]
    return [t[1:] if name == "vicuna" and t.startswith(" ") else t for t in texts]


def test_registry_and_unknown_name(tok):
    assert set(TEMPLATES) == {"chat", "alpaca", "vicuna"}
    for name in NAMES:
        template = get_template(name, tok)
        assert isinstance(template, Template) and template.name == name
    with pytest.raises(ValueError, match="unknown template 'llama9'.*alpaca, chat, vicuna"):
        get_template("llama9", tok)


def test_renders_single_turn_exactly(tok):
    expected = {
        "chat": "<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n<|im_start|>user\n"
        "What is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "alpaca": "Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\nWhat is the capital of France?\n\n### Response:\n",
        "vicuna": "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions. USER: What is the capital of France? "
        "ASSISTANT: ",
    }
    reply = Segment("The capital of France is Paris." + EOS, True)
    for name in NAMES:
        tail = [Segment("\n", False)] if name == "chat" else []
        assert get_template(name, tok).render(SINGLE.messages) == [Segment(expected[name], False), reply, *tail]


def test_system_message_replaces_default(tok):
    sample = InstructionSample.single_turn("Hi", "Hello", system="You are a pirate.")
    texts = {name: "".join(s.text for s in get_template(name, tok).render(sample.messages)) for name in NAMES}
    assert texts["alpaca"] == f"You are a pirate.\n\n### Instruction:\nHi\n\n### Response:\nHello{EOS}"
    assert texts["vicuna"] == f"You are a pirate. USER: Hi ASSISTANT: Hello{EOS}"
    assert texts["chat"].startswith("<|im_start|>system\nYou are a pirate.<|im_end|>\n")


def test_multi_turn_render_matches_fastchat_and_alpaca(tok):
    vicuna = "".join(s.text for s in get_template("vicuna", tok).render(MULTI.messages[:5]))
    assert vicuna == (
        f"Be brief. USER: Hello! ASSISTANT: Hi there.{EOS}"
        f"USER: Write a function. ASSISTANT: def f(x):\n    return x{EOS}"
    )
    alpaca = "".join(s.text for s in get_template("alpaca", tok).render(MULTI.messages[:3], True))
    assert alpaca == f"Be brief.\n\n### Instruction:\nHello!\n\n### Response:\nHi there.{EOS}\n\n### Response:\n"


@pytest.mark.parametrize("name", NAMES)
def test_single_turn_mask_is_exact(tok, name):
    template = get_template(name, tok)
    enc = encode_sft(SINGLE, template, tok, max_length=512)
    prompt = ids(tok, prompt_text(SINGLE.messages[:1], template))
    reply = ids(tok, (" " if name == "vicuna" else "") + SINGLE.response + EOS)
    tail = ids(tok, "\n") if name == "chat" else []
    assert enc["input_ids"] == prompt + reply + tail
    assert enc["labels"] == [IGNORE_INDEX] * len(prompt) + reply + [IGNORE_INDEX] * len(tail)
    assert enc["num_trainable"] == len(reply)
    assert reply[-1] == tok.eos_token_id


@pytest.mark.parametrize("name", NAMES)
def test_multi_turn_trains_every_assistant_turn_only(tok, name):
    enc = encode_sft(MULTI, get_template(name, tok), tok, max_length=512)
    replies = [m.content for m in MULTI.messages if m.role == "assistant"]
    assert labelled_runs(tok, enc["labels"], name) == [r + EOS for r in replies]
    assert all(label in (IGNORE_INDEX, tid) for label, tid in zip(enc["labels"], enc["input_ids"]))
    assert enc["num_trainable"] == sum(label != IGNORE_INDEX for label in enc["labels"])


@pytest.mark.parametrize("name", NAMES)
def test_closing_token_trained_and_following_text_not(tok, name):
    enc = encode_sft(MULTI, get_template(name, tok), tok, max_length=512)
    input_ids, labels = enc["input_ids"], enc["labels"]
    eos_positions = [i for i, t in enumerate(input_ids) if t == tok.eos_token_id]
    trained_eos = [i for i in eos_positions if labels[i] == tok.eos_token_id]
    assert len(trained_eos) == 3  # one per assistant turn
    for i in trained_eos:
        assert i + 1 == len(labels) or labels[i + 1] == IGNORE_INDEX
    if name == "chat":  # system/user turns close with <|im_end|> too, and those are not trained
        assert len(eos_positions) == 3 + 4
        assert all(tok.decode(input_ids[i + 1]) == "\n" for i in trained_eos)


def test_reply_first_token_merged_with_separator_is_trained(tok):
    # Vicuna's " The" starts on the prompt's separator space: the offset rule must still train it.
    enc = encode_sft(SINGLE, get_template("vicuna", tok), tok, max_length=512)
    first = next(i for i, label in enumerate(enc["labels"]) if label != IGNORE_INDEX)
    assert tok.decode(enc["input_ids"][first]).startswith(" The")
    assert tok.decode(enc["input_ids"][first - 1]) == ":"


@pytest.mark.parametrize("name", NAMES)
def test_prompt_text_is_training_prefix(tok, name):
    template = get_template(name, tok)
    for k in (2, 4, 6):  # every assistant turn of MULTI
        prompt = prompt_text(MULTI.messages[:k], template)
        segments = template.render(MULTI.messages[: k + 1])
        text = "".join(s.text for s in segments)
        before_reply = text[: text.rindex(MULTI.messages[k].content)]
        assert before_reply.startswith(prompt) and before_reply[len(prompt) :] in ("", " ")
        if name != "vicuna":  # vicuna's separator space is generated as part of the reply's first token
            assert prompt == before_reply
        enc = encode_sft(InstructionSample(MULTI.messages[: k + 1]), template, tok, max_length=512)
        prompt_ids = ids(tok, prompt)
        assert enc["input_ids"][: len(prompt_ids)] == prompt_ids
        assert enc["labels"][len(prompt_ids)] != IGNORE_INDEX


@pytest.mark.parametrize("name", NAMES)
def test_truncation_keeps_the_beginning(tok, name):
    template = get_template(name, tok)
    full = encode_sft(MULTI, template, tok, max_length=10_000)
    n = len(full["input_ids"]) - 7
    cut = encode_sft(MULTI, template, tok, max_length=n)
    assert cut["input_ids"] == full["input_ids"][:n] and cut["labels"] == full["labels"][:n]
    assert cut["num_trainable"] == sum(label != IGNORE_INDEX for label in full["labels"][:n])
    empty = encode_sft(SINGLE, template, tok, max_length=5)
    assert len(empty["input_ids"]) == 5 and empty["num_trainable"] == 0
    with pytest.raises(ValueError):
        encode_sft(SINGLE, template, tok, max_length=0)


@pytest.mark.parametrize("name", NAMES)
def test_preference_masks_prompt(tok, name):
    template = get_template(name, tok)
    enc = encode_preference(PAIR, template, tok, max_length=512)
    assert set(enc) == set(PREFERENCE_KEYS)
    prompt = ids(tok, prompt_text(PAIR.prompt, template))
    for kind, reply in (("chosen", PAIR.chosen), ("rejected", PAIR.rejected)):
        input_ids, labels = enc[f"{kind}_input_ids"], enc[f"{kind}_labels"]
        assert input_ids[: len(prompt)] == prompt and len(labels) == len(input_ids)
        # the earlier assistant turn in the prompt is not trained, only the final reply
        assert labelled_runs(tok, labels, name) == [reply + EOS]
        sft = encode_sft(InstructionSample((*PAIR.prompt, Message("assistant", reply))), template, tok, 512)
        assert input_ids == sft["input_ids"]


@pytest.mark.parametrize("name", NAMES)
def test_preference_truncates_prompt_from_left_then_reply_from_right(tok, name):
    template = get_template(name, tok)
    full = encode_preference(PAIR, template, tok, max_length=512)
    chosen_ids, chosen_labels = full["chosen_input_ids"], full["chosen_labels"]
    n_prompt = next(i for i, label in enumerate(chosen_labels) if label != IGNORE_INDEX)
    n_reply = len(chosen_ids) - n_prompt
    cut = encode_preference(PAIR, template, tok, max_length=n_reply + 3)
    assert cut["chosen_input_ids"] == chosen_ids[n_prompt - 3 :]  # last 3 prompt tokens + the whole reply
    assert cut["chosen_labels"] == chosen_labels[n_prompt - 3 :]
    assert cut["chosen_labels"][:3] == [IGNORE_INDEX] * 3
    assert len(cut["rejected_input_ids"]) == n_reply + 3  # shorter reply keeps more prompt
    tiny = encode_preference(PAIR, template, tok, max_length=4)
    first_reply = chosen_ids[n_prompt : n_prompt + 4]
    assert tiny["chosen_input_ids"] == first_reply and tiny["chosen_labels"] == chosen_labels[n_prompt : n_prompt + 4]


def test_collate_pads_right_with_masks():
    feats = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8], "num_trainable": 1}]
    batch = collate(feats, pad_id=3)
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 3, 3]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["input_ids"].dtype == torch.long
    with pytest.raises(ValueError):
        collate([], pad_id=3)


def test_collate_preference_pads_to_common_length(tok):
    template = get_template("chat", tok)
    feats = [encode_preference(PAIR, template, tok, 512), encode_preference(PAIR, template, tok, 20)]
    batch = collate(feats, pad_id=tok.pad_token_id)  # the default keys fall back to the DPO keys
    assert batch.keys() == collate(feats, tok.pad_token_id, keys=PREFERENCE_KEYS).keys()
    width = len(feats[0]["chosen_input_ids"])
    for kind in ("chosen", "rejected"):
        assert batch[f"{kind}_input_ids"].shape == batch[f"{kind}_labels"].shape == (2, width)
        lengths = [len(f[f"{kind}_input_ids"]) for f in feats]
        assert batch[f"{kind}_attention_mask"].sum(1).tolist() == lengths
        assert (batch[f"{kind}_input_ids"][batch[f"{kind}_attention_mask"] == 0] == tok.pad_token_id).all()
    assert torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]]).shape == (4, width)


def test_chat_template_not_prefix_stable_is_rejected(tok):
    unstable = build_tiny_tokenizer()
    # a reasoning-style template: the generation prompt opens a think block that stored replies lack
    unstable.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n' }}{% endif %}"
    )
    template = get_template("chat", unstable)
    assert prompt_text(SINGLE.messages[:1], template).endswith("<think>\n")
    with pytest.raises(TemplateError, match="not prefix-stable"):
        encode_sft(SINGLE, template, unstable, max_length=512)


def test_chat_template_dropping_history_is_rejected(tok):
    unstable = build_tiny_tokenizer()
    # only the last assistant reply is shown, so the first turn's render is not a prefix of the whole
    unstable.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    with pytest.raises(TemplateError, match="not prefix-stable"):
        get_template("chat", unstable).render(MULTI.messages)


def test_chat_template_needs_a_jinja_template(tok):
    bare = build_tiny_tokenizer()
    bare.chat_template = None
    with pytest.raises(TemplateError, match="no chat_template"):
        get_template("chat", bare)
    with pytest.raises(TemplateError, match="opens a conversation"):
        get_template("chat", tok).render([Message("assistant", "Hi")])


def test_hand_written_templates_spell_out_a_default_bos():
    llama_like = build_tiny_tokenizer()  # a tokenizer that prepends BOS by default, as Llama's does
    llama_like.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", llama_like.bos_token_id)]
    )
    for name in ("alpaca", "vicuna"):
        template = get_template(name, llama_like)
        assert prompt_text(SINGLE.messages[:1], template).startswith("<|endoftext|>")
        input_ids = encode_sft(SINGLE, template, llama_like, max_length=512)["input_ids"]
        assert input_ids[0] == llama_like.bos_token_id and input_ids.count(llama_like.bos_token_id) == 1
