"""In-domain test items for reference-based metrics (Ref-judge, embedding similarity): a given test
set file (FedLLM-Bench's Fed-Aya / Chatbot / WildChat test sets, or JSONL), or else the held-out
split of the target's own federation. Both metrics ask the same questions with the same decoding,
so they share one set of generations."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedllm.data.schema import InstructionSample, PreferenceSample
from fedllm.eval.benchdata import load_ref_testset
from fedllm.eval.context import EvalContext


@dataclass(frozen=True)
class InDomainItem:
    item_id: str
    language: str | None
    messages: tuple[tuple[str, str], ...]  # (role, content) up to the user turn to answer
    reference: str | None

    @property
    def question(self) -> str:
        return self.messages[-1][1]


def _from_sample(item_id: str, sample: object, language: str | None) -> InDomainItem | None:
    if isinstance(sample, PreferenceSample):
        return InDomainItem(item_id, language, tuple((m.role, m.content) for m in sample.prompt), sample.chosen)
    if isinstance(sample, InstructionSample):
        msgs = list(sample.messages)
        last = max((i for i, m in enumerate(msgs) if m.role == "assistant"), default=None)
        if last is None:
            return None
        return InDomainItem(item_id, language, tuple((m.role, m.content) for m in msgs[:last]), msgs[last].content)
    return None


def indomain_items(ctx: EvalContext) -> tuple[list[InDomainItem], str]:
    """The items and a description of where they came from."""
    path = ctx.option("testset", "")
    if path:
        items = [InDomainItem(r.item_id, r.language, (("user", r.instruction),), r.reference)
                 for r in load_ref_testset(Path(path))]
        return ctx.subset(items, group=lambda it: it.language or ""), str(path)
    from fedllm.runs import load_federation, run_clients

    cfg = ctx.target.cfg
    fed = load_federation(cfg)
    per_client = ctx.option("per_client", 1)
    items = []
    for cid in run_clients(cfg, fed):
        client = fed[cid]
        lang = client.meta.get("language") if isinstance(client.meta.get("language"), str) else None
        for i, s in enumerate(client.test[:per_client]):
            if (it := _from_sample(f"{cid}/{i}", s, lang)) is not None:
                items.append(it)
    return ctx.subset(items), f"{cfg.data.dataset} held-out split ({per_client} per client)"


def indomain_answers(ctx: EvalContext, items: list[InDomainItem], max_new_tokens: int = 256) -> list[str]:
    """Answers sampled at temperature 0.7 (FedLLM-Bench's setting for in-domain sets); 256 new tokens by
    default, FedLLM-Bench's 1,024 under ref_judge's ``preset=fedllm-bench``."""
    d = ctx.decoding(temperature=0.7, max_new_tokens=max_new_tokens)
    return ctx.generate([(f"indomain/{it.item_id}", ctx.prompt([{"role": r, "content": c} for r, c in it.messages]), d)
                         for it in items], desc="in-domain answers")
