"""The markdown dataset card (README.md) rendered from stats.json alone."""

from __future__ import annotations

import math
from typing import Any

from fedllm.describe import fmt_pm

MAX_TABLE_ROWS = 100
LANGUAGE_HINT = (
    "no client language is known (looked for: a `language`/`languages` entry in client metadata, "
    "`clients.<id>.languages` in a manifest.json beside the data file, and a `language` field on the "
    "records), so the language figure is skipped"
)


def _num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _figure(stats: dict[str, Any], key: str, alt: str) -> list[str]:
    name = stats["figures"].get(key)
    return [f"![{alt}]({name})", ""] if name else []


def _table1(stats: dict[str, Any]) -> list[str]:
    t = stats["table1"]
    ifd = fmt_pm(t["ifd"], 3) if t.get("ifd") else "not computed"
    return [
        "| Dataset | Clients | Samples | Samples / client | Instruction tokens | Response tokens | Quality (IFD) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| {_cell(t['dataset'])} | {t['clients']} | {t['total_samples']} | {fmt_pm(t['samples_per_client'])} | "
        f"{fmt_pm(t['instruction_tokens'])} | {fmt_pm(t['response_tokens'])} | {ifd} |",
        "",
    ]


_FIXUP_WORDS = {"leading_assistant_turn_dropped": "assistant turns opening a conversation dropped",
                "trailing_user_turn_dropped": "user turns after the last reply dropped (they would not be trained)",
                "empty_response_kept": "empty responses kept (they train the end-of-turn token)",
                "empty_assistant_turn_kept": "empty assistant turns kept", "empty_user_turn_kept": "empty user turns kept"}


def _fixups(stats: dict[str, Any]) -> list[str]:
    """What was read the way FedLLM-Bench's preprocessing reads its files, with counts."""
    total = (stats.get("fixups") or {}).get("total") or {}
    if not total:
        return []
    parts = "; ".join(f"{n} {_FIXUP_WORDS.get(k, k)}" for k, n in total.items())
    return [f"Read as FedLLM-Bench reads its files: {parts} (per client: `fixups` in stats.json).", ""]


def _truncation(stats: dict[str, Any]) -> list[str]:
    """One line: how many samples the training max_length leaves without a response token."""
    tr = stats.get("truncated_to_nothing")
    if not tr:
        return []
    n, at = tr["total"], f"At max_length {tr['max_length']} (`{tr['template']}` template)"
    if not n:
        return [f"{at}, every sample keeps at least one response token.", ""]
    worst = sorted(tr["per_client"].items(), key=lambda kv: -kv[1])[:3]
    most = ", ".join(f"{_cell(cid)} ({k})" for cid, k in worst)
    verb = "keeps" if n == 1 else "keep"
    return [f"{at}, {n} sample{'s' * (n != 1)} ({tr['share']:.1%}) {verb} no response token and "
            f"{'is' if n == 1 else 'are'} dropped from training (most in: {most}).", ""]


def _ifd_method(stats: dict[str, Any]) -> list[str]:
    s = stats["settings"]
    info = stats["ifd"]
    return [
        f"IFD (instruction-following difficulty, Li et al. 2024) = s(A|Q) / s(A), the mean token "
        f"cross-entropy of the response A given its instruction Q over that of A alone, by `{s['model']}`:",
        "",
        f"* **s(A|Q)**: the sample's conversation up to the scored reply (every message before the first "
        f"assistant message, system message included; for preference data the prompt), followed by the reply, "
        f"rendered with the `{s['template']}` template; the loss covers the reply's tokens and the token that "
        f"closes it (e.g. `<|im_end|>`), nothing else.",
        "* **s(A)**: the same template rendering with the sample's context replaced by one empty user message "
        "(no sample system message, so the template's default system text if any), followed by the same reply; "
        "the loss covers the same reply tokens.",
        f"* Renderings longer than {s['max_length']} tokens lose their prompt from the left first.",
        f"* **Cap:** at most **{s['max_samples_per_client']} samples per client** are scored (the first of a "
        f"permutation seeded by seed {s['seed']} and the client id); per-client IFD is their mean. Lower IFD: "
        f"the instruction helps more to predict the response; IFD > 1 hints at a response unrelated to its "
        f"instruction.",
        f"* Results are cached per scored reply (`{info.get('cache_file')}`); this run scored "
        f"{info.get('replies_scored_now', 0)} replies and took {info.get('replies_from_cache', 0)} from the cache.",
        "",
    ]


def _clients_table(stats: dict[str, Any]) -> list[str]:
    rows = sorted(stats["clients"], key=lambda c: -c["samples"])
    pref = any("length_preference" in c for c in rows)
    verbs, langs = any(c.get("top_verbs") for c in rows), any(c.get("languages") for c in rows)
    head = ["client", "samples", "instruction tokens (mean / median)", "response tokens (mean / median)", "IFD (n)"]
    head += ["length pref.", "quality pref."] if pref else []
    head += ["top root verbs"] if verbs else []
    head += ["languages"] if langs else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in rows[:MAX_TABLE_ROWS]:
        ins, res, ifd = c.get("instruction_tokens", {}), c.get("response_tokens", {}), c.get("ifd", {})
        cells = [
            _cell(c["id"]), str(c["samples"]),
            f"{_num(ins.get('mean'))} / {_num(ins.get('median'))}", f"{_num(res.get('mean'))} / {_num(res.get('median'))}",
            f"{_num(ifd.get('mean'), 3)} ({ifd.get('n', 0)})" if ifd else "–",
        ]
        if pref:
            cells += [_num(c.get("length_preference"), 2), _num(c.get("quality_preference"), 3)]
        if verbs:
            cells.append(_cell(", ".join(f"{v} ({n})" for v, n in c.get("top_verbs", [])) or "–"))
        if langs:
            shares = c.get("languages") or {}
            total = sum(shares.values()) or 1
            top = sorted(shares.items(), key=lambda kv: -kv[1])[:3]
            cells.append(_cell(", ".join(f"{k} {v / total:.0%}" for k, v in top) or "–"))
        lines.append("| " + " | ".join(cells) + " |")
    if len(rows) > MAX_TABLE_ROWS:
        lines += ["", f"({len(rows) - MAX_TABLE_ROWS} smaller clients not shown; all are in stats.json.)"]
    return [*lines, ""]


def render(stats: dict[str, Any]) -> str:
    d, s, t = stats["dataset"], stats["settings"], stats["table1"]
    kinds = ", ".join(f"{n} {k} client(s)" for k, n in d["kinds"].items()) or "no samples"
    out = [
        f"# {d['name']}: dataset card",
        "",
        f"Generated by `fedllm data stats`. Source: `{d['source']}` (content hash `{d['content_hash']}`: sha256 of the canonical records, 128 bits); "
        f"{kinds}. All samples of every client are counted (no train/test split). Tokens are counted with the "
        f"tokenizer of `{s['model']}` on the raw texts (no template, no special tokens): the instruction is the "
        f"first user message, the response the first assistant message (for preference data the chosen reply). "
        f"± is the population standard deviation over clients. All numbers are in `stats.json`.",
        "",
        "## Summary (FedLLM-Bench Table 1)",
        "",
        *_table1(stats),
        "Samples per client: over all clients. Instruction/response tokens: over clients of each client's mean. "
        + (f"Quality: over clients of each client's mean IFD of up to {s['max_samples_per_client']} samples."
           if t.get("ifd") else "Quality: IFD not computed."),
        "",
    ]
    if stats["problems"]:
        out += ["## Problems found in the data", "", *[f"* {_cell(p)}" for p in stats["problems"]], ""]
    out += ["## Quantity", "", *_figure(stats, "quantity", "samples per client")]
    out += ["## Lengths", "", *_fixups(stats), *_truncation(stats), *_figure(stats, "lengths", "token lengths per client")]
    out += ["## Languages", ""]
    if "languages" in stats["figures"]:
        out += [f"Languages from {d['language_source']}.", "", *_figure(stats, "languages", "languages of clients")]
    else:
        out += [f"Skipped: {LANGUAGE_HINT}.", ""]
    out += ["## Data quality (IFD)", ""]
    if stats["ifd"].get("computed"):
        out += [*_ifd_method(stats), *_figure(stats, "ifd", "IFD per client")]
    else:
        out += ["Not computed (`--no-ifd`).", ""]
    if "preference" in stats["figures"]:
        out += ["## Preferences", "",
                "Length preference: share of a client's pairs whose chosen reply has more tokens than the rejected "
                "one (all pairs). Quality preference: mean of IFD(chosen) − IFD(rejected) over the scored pairs "
                "(negative: the chosen reply follows the prompt more closely).", "",
                *_figure(stats, "preference", "preferences per client")]
    out += ["## Embeddings", ""]
    e = stats["embeddings"]
    if e.get("computed"):
        out += [f"{e['points']} instruction–response pairs (`instruction + \"\\n\\n\" + response`, up to "
                f"{s['embed_per_client']} per client) of {len(e['clients'])} clients chosen with seed {s['seed']}, "
                f"embedded with {e['embedder']} ({e['dim']} dimensions) and projected with t-SNE "
                f"(perplexity {e['perplexity']:.1f}, seed {s['seed']}).", "",
                *_figure(stats, "embeddings", "t-SNE of client embeddings")]
    else:
        out += ["Not computed.", ""]
    out += ["## Root verbs of instructions", ""]
    v = stats["root_verbs"]
    if v.get("computed"):
        top = ", ".join(f"{verb} ({n})" for verb, n in v["top_overall"][:10]) or "none found"
        out += [f"Root verb of the first line of up to {s['verbs_per_client']} instructions per client. "
                f"Most common overall: {top}.", "", *_figure(stats, "root_verbs", "top root verbs per client")]
    else:
        out += [v.get("skipped", "Not computed."), ""]
    out += ["## Per-client statistics", "", *_clients_table(stats)]
    if stats["notes"]:
        out += ["## Notes", "", *[f"* {n}" for n in stats["notes"]], ""]
    return "\n".join(out).rstrip() + "\n"
