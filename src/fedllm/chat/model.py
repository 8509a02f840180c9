"""A trained run as a conversation partner: the base model with the run's adapter (or with it
switched off, for the base model's answer to the same conversation), prompted with the run's own
template and streaming its reply."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from fedllm.data.formatting import get_template, prompt_text
from fedllm.data.schema import Message
from fedllm.eval.generation import Decoding, GenRequest, TextModel
from fedllm.eval.target import Target, resolve_target


@dataclass
class ChatModel:
    """One loaded model that answers as the run (``adapter=True``) or as its base (``adapter=False``)."""

    target: Target
    text: TextModel
    template: Any
    has_adapter: bool
    client: str | None = None  # whose personal adapter answers, if one was asked for

    @classmethod
    def load(cls, spec: str, client: str | None = None) -> ChatModel:
        """``spec`` as for `fedllm eval`: a run directory, ``<run>@round-N``, an adapter directory or "base";
        ``client``: that client's personal adapter instead of the run's global one."""
        from fedllm.eval.runner import end_of_turn_ids, load_targets_model, select_target
        from fedllm.models.stored_weights import store_for_inference

        target = resolve_target(spec)
        base, slot = load_targets_model([target])
        select_target(target, base, slot)  # the adapter goes into the slot; "base" has none
        if client is not None:
            slot.load(personal_state(target, slot.read(), client))
        store_for_inference(base.model, base.precision)
        text = TextModel(base.model, base.tokenizer, base.precision, end_of_turn_ids(base.tokenizer))
        return cls(target, text, get_template(target.cfg.data.template, base.tokenizer), slot is not None, client)

    def prompt(self, messages: Sequence[Message]) -> str:
        return prompt_text(list(messages), self.template)

    def reply(self, messages: Sequence[Message], decoding: Decoding, adapter: bool = True, seed: int = 0) -> Iterator[str]:
        """The next assistant turn, streamed as pieces of text; ``adapter=False``: the base model's."""
        request = GenRequest("chat", self.prompt(messages), decoding, seed=seed)
        switch = self.text.model.disable_adapter() if (self.has_adapter and not adapter) else nullcontext()
        with switch:
            yield from self.text.stream(request)


def personal_state(target: Target, global_state: dict[str, Any], client: str) -> dict[str, Any]:
    """A client's own adapter in a run that keeps one: fine-tuned at the last personal evaluation
    (``personal.finetune_steps``), else the personalised method's (Ditto's v_i, pFedMe's θ_i, FedSA's
    own B). TargetError when the run keeps none for that client."""
    from fedllm.engine.personal import FINETUNED, method_adapter
    from fedllm.engine.store import ClientStateStore
    from fedllm.eval.target import TargetError
    from fedllm.fl import build_algorithm
    from fedllm.fl.state import match
    from fedllm.runs import CLIENT_STATE

    if target.run_dir is None or target.kind != "run":
        raise TargetError(f"--client needs a finished run directory (its final personal adapters), not {target.label}")
    root = target.run_dir / CLIENT_STATE
    why = ("a personalised method (ditto, pfedme, fedsa) or personal.finetune_steps > 0 keeps one per client")
    if not root.is_dir():
        raise TargetError(f"{target.run_dir}: the run keeps no personal adapters ({why})")
    store = ClientStateStore(root)
    tuned = store.get(client, FINETUNED)
    if tuned is not None:
        return match(tuned, global_state)
    own = method_adapter(build_algorithm(target.cfg.fl, 1).client_method()["name"], global_state, store, client)
    if own is None:
        raise TargetError(f"{target.run_dir}: no personal adapter for client {client!r} ({why}, for clients that "
                          f"trained)")
    return own
