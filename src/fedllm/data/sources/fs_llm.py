"""The FederatedScope-LLM (FS-LLM) federations: Fed-Dolly, Fed-CodeAlpaca, Fed-GSM8K-3, Fed-CodeSearchNet.

FS-LLM splits public instruction sets by a meta field (its "meta splitter") or IID:

* ``fed-dolly``: databricks/databricks-dolly-15k, one client per ``category`` (8 clients). FS-LLM
  loads ``context`` as the Alpaca ``input``, so a non-empty context follows the instruction after a
  blank line (what the FedLLM-Bench format does with ``input``).
* ``fed-codealpaca``: one client per programming language, 9 clients, X86-64 Assembly left out
  (too few samples). FS-LLM's own loader reads ``rosetta_alpaca.json`` of the CodeAlpaca GitHub
  repository (~8k Rosetta Code tasks) whose ``input`` field *is* the language: pass that file as
  ``data_files`` with ``language_from="input"`` to reproduce it exactly. The hub's
  sahil2801/CodeAlpaca-20k has no language field; with ``language_from="keywords"`` (default) a
  sample's language is assigned by the documented keyword rules of :func:`classify_language`, and
  samples with no language, an ambiguous one, or one outside ``languages`` are dropped with counts.
* ``fed-gsm8k-3``: openai/gsm8k ``main`` train split dealt IID to 3 clients by a seeded hash order;
  FS-LLM rewrites the final ``#### 42`` as ``The answer is 42`` (``fs_llm_answer``).
* ``fed-codesearchnet``: code_search_net, one client per language (go, java, javascript, php,
  python, ruby): instruction = ``"<language> <func_documentation_string>"`` (FS-LLM prefixes the
  language), response = ``func_code_string``. The source has ~1.9M functions, so
  ``max_samples_per_client`` (default 10,000; None for all) keeps a seeded hash sample per client
  (FS-LLM subsamples by a rate instead).
"""

from __future__ import annotations

import heapq
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from fedllm.data.schema import InstructionSample
from fedllm.data.sources import register_source
from fedllm.data.sources.hub import (
    INPUT_KWARGS,
    Built,
    Drops,
    PublicSource,
    Row,
    check_choice,
    rank_key,
    select_clients,
    text_field,
)

__all__ = [
    "CODEALPACA_LANGUAGES",
    "CSN_LANGUAGES",
    "FedCodeAlpaca",
    "FedCodeSearchNet",
    "FedDolly",
    "FedGSM8K3",
    "classify_language",
    "language_evidence",
]


def _alpaca_instruction(instruction: str, extra: str | None) -> str:
    """Alpaca instruction + optional input, joined as the FedLLM-Bench `input` field is."""
    return f"{instruction}\n\n{extra}" if extra else instruction


class _MetaSplit(PublicSource):
    """One client per value of a meta field: rows -> (client, sample) by `sample_of`."""

    meta_field: ClassVar[str] = ""  # the field whose value names the client (its groupable attribute)

    def client_attributes(self, manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The meta field's value is the client id (e.g. Fed-Dolly's ``category``)."""
        return {cid: {self.meta_field: cid} if self.meta_field else {} for cid in manifest["clients"]}

    def sample_of(self, row: Row, params: Mapping[str, Any]) -> tuple[str, InstructionSample] | str:
        raise NotImplementedError  # pragma: no cover

    def construct(self, rows: Iterable[Row], params: Mapping[str, Any], drops: Drops) -> Built:
        groups: dict[str, list[InstructionSample]] = defaultdict(list)
        for row in rows:
            got = self.sample_of(row, params)
            if isinstance(got, str):
                drops.row(got)
            else:
                groups[got[0]].append(got[1])
        return Built(select_clients(groups, drops, min_samples=params["min_samples"]))


# --------------------------------------------------------------------------------------------
# Fed-Dolly
# --------------------------------------------------------------------------------------------


@register_source("fed-dolly")
class FedDolly(_MetaSplit):
    """Fed-Dolly: Dolly-15k by task category (open_qa, closed_qa, brainstorming, ...)."""

    description = (
        "FS-LLM Fed-Dolly: databricks/databricks-dolly-15k, one client per category (8 clients: task skew); "
        "context appended to the instruction."
    )
    hub_id = "databricks/databricks-dolly-15k"
    meta_field = "category"
    required_fields = ("instruction", "context", "response", "category")
    construction = "sample = instruction (+ blank line + context if any) -> response; one client per `category`."
    default_kwargs = MappingProxyType({**INPUT_KWARGS, "hub_id": hub_id, "min_samples": 1})

    def sample_of(self, row: Row, params: Mapping[str, Any]) -> tuple[str, InstructionSample] | str:
        category = text_field(row, "category", self.name)
        instruction, response = text_field(row, "instruction", self.name), text_field(row, "response", self.name)
        if category is None:
            return "no_category"
        if instruction is None or response is None:
            return "empty_text"
        prompt = _alpaca_instruction(instruction, text_field(row, "context", self.name))
        return category, InstructionSample.single_turn(prompt, response)


# --------------------------------------------------------------------------------------------
# Fed-CodeAlpaca and its keyword classifier
# --------------------------------------------------------------------------------------------

CODEALPACA_LANGUAGES: tuple[str, ...] = ("C", "C#", "C++", "Go", "Java", "JavaScript", "PHP", "Python", "Ruby")

_I = re.IGNORECASE
_M = re.MULTILINE
# Explicit mentions in the instruction/input: (language, pattern). "C", "Go" and "R" are common words
# or letters, so they count only in phrases like "in C", "a Go program", "C code".
_MENTIONS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("Visual Basic", re.compile(r"\bvisual basic\b|\bvb(?:\.net|a)?\b", _I)),
    ("Objective-C", re.compile(r"\bobjective[- ]c\b|\bobj-c\b", _I)),
    ("C#", re.compile(r"(?<![\w+#])c#|\bc sharp\b|(?<!vb)\.net\b", _I)),
    ("C++", re.compile(r"(?<![\w+#])c\+\+|\bcpp\b", _I)),
    ("TypeScript", re.compile(r"\btypescript\b", _I)),
    ("JavaScript", re.compile(r"\bjavascript\b|\bjs\b|\bnode\.?js\b|\bjquery\b|\breact(?:\.?js)?\b", _I)),
    ("Java", re.compile(r"\bjava\b(?!\s*script)", _I)),
    ("Python", re.compile(r"\bpython\d?\b|\bpandas\b|\bnumpy\b|\bdjango\b|\bflask\b", _I)),
    ("Ruby", re.compile(r"\bruby\b|\brails\b", _I)),
    ("PHP", re.compile(r"\bphp\b", _I)),
    ("Go", re.compile(r"\bgolang\b|\b(?:in|using) Go\b|\bGo (?:program|function|code|language|script)\b")),
    ("C", re.compile(r"\b(?:in|using) C\b(?![+#])|\bC (?:program|function|code|language)\b|\bANSI C\b")),
    ("R", re.compile(r"\b(?:in|using) R\b|\bR (?:program|function|code|language|script)\b")),
    ("Swift", re.compile(r"\bswift\b", _I)),
    ("Kotlin", re.compile(r"\bkotlin\b", _I)),
    ("Rust", re.compile(r"\brust\b", _I)),
    ("SQL", re.compile(r"\b(?:sql|mysql|postgres(?:ql)?|sqlite)\b", _I)),
    ("HTML/CSS", re.compile(r"\bhtml5?\b|\bcss3?\b", _I)),
    ("Bash", re.compile(r"\bbash\b|\bshell script\b", _I)),
    ("X86-64 Assembly", re.compile(r"\bassembly\b|\bx86\b", _I)),
)
# Syntax of the answer, in precedence order (the first that matches wins when several do): specific
# markers first, Python last because its markers (print(, for ... in ...:) are the most generic.
_CODE: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("PHP", re.compile(r"<\?php|\becho\s+\$\w+")),
    ("HTML/CSS", re.compile(r"<(?:!DOCTYPE|html|head|body|div|span|table|form|ul|ol|h[1-6]|p)\b|^\s*[.#]?[\w-]+\s*\{\s*[\w-]+\s*:", _I | _M)),
    ("SQL", re.compile(r"^\s*(?:SELECT\b[\s\S]*\bFROM\b|INSERT INTO\b|UPDATE \w+ SET\b|DELETE FROM\b|CREATE TABLE\b|ALTER TABLE\b)", _I | _M)),
    ("Visual Basic", re.compile(r"^\s*(?:Dim \w+ As\b|(?:Public |Private )?(?:Sub|Function) \w+\(.*\)(?: As \w+)?\s*$|"
                                r"End (?:Sub|Function|Module|If)\b|Module \w+\s*$)", _M)),
    ("Objective-C", re.compile(r"#import\s*<Foundation/|@interface\b|@implementation\b|\bNSLog\(|\bNSString\b")),
    ("C#", re.compile(r"\bConsole\.Write(?:Line)?\(|^\s*using System\b|\bstatic void Main\(", _M)),
    ("Java", re.compile(r"\bSystem\.out\.print|\bpublic static void main\s*\(|^\s*import java\.|\bInteger\.parseInt\(|"
                        r"\bString\[\]\s+\w+|^\s*public\s+(?:static\s+)?(?:final\s+)?[\w<>\[\]]+\s+\w+\s*\([^)]*\)\s*\{", _M)),
    ("C++", re.compile(r"#include\s*<(?:iostream|vector|string|map|set|algorithm|cmath)>|\bstd::|\bcout\s*<<|\bcin\s*>>")),
    ("C", re.compile(r"#include\s*<\w+\.h>|\bprintf\s*\(|\bscanf\s*\(|\bint main\s*\(")),
    ("Go", re.compile(r"^\s*package main\b|\bfmt\.\w+\(|^\s*func \w+\([^)]*\)\s*[\w\[\]*]*\s*\{", _M)),
    ("Rust", re.compile(r"\bfn \w+\(|\bprintln!\(|\blet mut\b")),
    ("Swift", re.compile(r"\bfunc \w+\([^)]*\)\s*->|\b(?:let|var) \w+\s*:\s*\[?\w+\]?\s*=")),
    ("Kotlin", re.compile(r"\bfun \w+\(|\bval \w+\s*=")),
    ("Ruby", re.compile(r"\bputs\b|\.each do\b|\battr_accessor\b|^\s*end\s*$", _M)),
    ("R", re.compile(r"^\s*\w+\s*<-\s*", _M)),
    ("TypeScript", re.compile(r"\b(?:let|const|function \w+\([^)]*)\s*\w*\s*:\s*(?:number|string|boolean)\b")),
    # Python's defining lines are decisive: a Python answer may mention `document.` or `=>` in a string or comment
    ("Python", re.compile(r"^\s*def \w+\(.*\)\s*(?:->\s*[^:]+)?:\s*(?:#.*)?$|^\s*(?:el)?if .+:\s*$|"
                          r"^if __name__ == ", _M)),
    ("JavaScript", re.compile(r"\bconsole\.log\(|\bfunction[ \t]*\w*[ \t]*\([^)\n]*\)[ \t]*\{|\b(?:const|let|var)\s+\w+\s*=|"
                              r"(?:\)|\b\w+)[ \t]*=>[ \t]*[{(\w]|\bdocument\.(?:getElement|querySelector|write|"
                              r"createElement|addEventListener|body)|\$\(")),
    ("Bash", re.compile(r"^#!/bin/(?:ba)?sh|^\s*(?:fi|done|esac)\s*$", _M)),
    ("X86-64 Assembly", re.compile(r"^\s*(?:mov|push|pop|jmp|call|syscall|section)\b", _I | _M)),
    ("Python", re.compile(r"^\s*def \w+\(.*\)\s*(?:->\s*[^:]+)?:\s*$|^\s*(?:import \w+|from [\w.]+ import)|\bprint\(|^\s*for \w+(?:, \w+)* in .+:\s*$|^\s*class \w+(?:\(.*\))?:\s*$", _M)),
)
_ORDER = list(dict.fromkeys(lang for lang, _ in _CODE))


def classify_language(instruction: str, extra: str | None, output: str) -> str:
    """The programming language of a CodeAlpaca-style sample, or 'none' / 'ambiguous'.

    1. Languages named in the instruction or input (``_MENTIONS``): exactly one -> that language.
    2. Otherwise the answer's syntax (``_CODE``): the languages whose markers occur in the output,
       restricted to the named ones when several were named; the first of them in ``_CODE`` order
       (specific before generic: C++ before C, Python last) wins.
    3. Several named and none of them recognisable in the output -> 'ambiguous'; nothing named and no
       marker -> 'none' (e.g. a question answered in prose).
    """
    return language_evidence(instruction, extra, output)[0]


def language_evidence(instruction: str, extra: str | None, output: str) -> tuple[str, set[str], list[str]]:
    """(classify_language's decision, the languages named, the languages whose markers the answer has,
    in precedence order): the evidence a build manifest reports as the classifier's confusion."""
    text = f"{instruction}\n{extra or ''}"
    named = {lang for lang, pat in _MENTIONS if pat.search(text)}
    coded = list(dict.fromkeys(lang for lang, pat in _CODE if pat.search(output)))
    if len(named) == 1:
        return next(iter(named)), named, coded
    if named:
        within = [lang for lang in coded if lang in named]
        return (within[0] if within else "ambiguous"), named, coded
    return (coded[0] if coded else "none"), named, coded


@register_source("fed-codealpaca")
class FedCodeAlpaca(_MetaSplit):
    """Fed-CodeAlpaca: code instructions, one client per programming language."""

    description = (
        "FS-LLM Fed-CodeAlpaca: code instructions, one client per programming language (9 clients, X86-64 Assembly "
        "excluded); language from keyword rules on sahil2801/CodeAlpaca-20k, or rosetta_alpaca.json's `input`."
    )
    hub_id = "sahil2801/CodeAlpaca-20k"
    builder_version = 2  # 2: classifier fixes (Python vs JavaScript, Visual Basic, Objective-C, Java)
    meta_field = "language"
    required_fields = ("instruction", "input", "output")
    construction = (
        "sample = instruction (+ blank line + input if any) -> output; client = language: the `input` field "
        "(language_from='input', FS-LLM's rosetta_alpaca.json) or classify_language's keyword rules "
        "(language_from='keywords'); languages outside `languages` or in `exclude_languages` dropped."
    )
    default_kwargs = MappingProxyType(
        {
            **INPUT_KWARGS,
            "hub_id": hub_id,
            "language_from": "keywords",  # or "input" (rosetta_alpaca.json)
            "languages": None,  # None: CODEALPACA_LANGUAGES for keywords, every language for input
            "exclude_languages": ("X86-64 Assembly",),
            "min_samples": 1,
        }
    )

    def construct(self, rows: Iterable[Row], params: Mapping[str, Any], drops: Drops) -> Built:
        """The clients, and the classifier's confusion in the manifest: with keywords, per language a
        row was filed under, the other languages whose markers its answer also had; with a labelled
        input (``language_from='input'``), labelled language -> what the keyword rules would say, and
        their precision per predicted language."""
        self._also: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._labelled: defaultdict[str, Counter[str]] = defaultdict(Counter)
        built = super().construct(rows, params, drops)
        report: dict[str, Any] = {"rules": "classify_language (fedllm.data.sources.fs_llm)"}
        if params["language_from"] == "keywords":
            report["filed_with_other_markers"] = {k: dict(v.most_common()) for k, v in sorted(self._also.items())}
        else:
            predicted: defaultdict[str, Counter[str]] = defaultdict(Counter)
            for truth, row in self._labelled.items():
                for pred, n in row.items():
                    predicted[pred][truth] += n
            report["confusion"] = {k: dict(v.most_common()) for k, v in sorted(self._labelled.items())}
            report["precision"] = {pred: row[pred] / sum(row.values()) for pred, row in sorted(predicted.items())
                                   if pred not in ("none", "ambiguous")}
        built.report["classifier"] = report
        return built

    def sample_of(self, row: Row, params: Mapping[str, Any]) -> tuple[str, InstructionSample] | str:
        check_choice(self.name, "language_from", params["language_from"], ("keywords", "input"))
        instruction, output = text_field(row, "instruction", self.name), text_field(row, "output", self.name)
        extra = text_field(row, "input", self.name)
        if instruction is None or output is None:
            return "empty_text"
        if params["language_from"] == "input":
            if extra is None:
                return "no_language"
            language = extra.strip()  # FS-LLM also keeps it as the Alpaca input of the prompt
            keep = params["languages"]
            if hasattr(self, "_labelled"):
                self._labelled[language][classify_language(instruction, None, output)] += 1
        else:
            language, _, coded = language_evidence(instruction, extra, output)
            if hasattr(self, "_also"):
                self._also[language].update(c for c in coded if c != language)
            if language in ("none", "ambiguous"):
                return f"{language}_language"
            keep = params["languages"] if params["languages"] is not None else CODEALPACA_LANGUAGES
        if language in params["exclude_languages"]:
            return "excluded_language"
        if keep is not None and language not in keep:
            return "language_not_selected"
        return language, InstructionSample.single_turn(_alpaca_instruction(instruction, extra), output)


# --------------------------------------------------------------------------------------------
# Fed-GSM8K-3
# --------------------------------------------------------------------------------------------


@register_source("fed-gsm8k-3")
class FedGSM8K3(PublicSource):
    """Fed-GSM8K-3: GSM8K training problems split IID over 3 clients."""

    description = "FS-LLM Fed-GSM8K-3: openai/gsm8k (main, train) split IID into 3 clients by a seeded hash order."
    hub_id = "openai/gsm8k"
    hub_config = "main"
    required_fields = ("question", "answer")
    construction = (
        "sample = question -> answer ('#### x' written 'The answer is x' when fs_llm_answer); rows ordered by "
        "blake2b(seed, row index) and dealt round-robin to client_0..client_{n-1} (sizes differ by <= 1), "
        "each client in source order."
    )
    default_kwargs = MappingProxyType({**INPUT_KWARGS, "hub_id": hub_id, "num_clients": 3, "seed": 0, "fs_llm_answer": True})

    def construct(self, rows: Iterable[Row], params: Mapping[str, Any], drops: Drops) -> Built:
        n = int(params["num_clients"])
        if n < 1:
            raise ValueError(f"{self.name}: num_clients must be >= 1, got {n}")
        samples = []
        for row in rows:
            question, answer = text_field(row, "question", self.name), text_field(row, "answer", self.name)
            if question is None or answer is None:
                drops.row("empty_text")
                continue
            if params["fs_llm_answer"]:
                answer = answer.replace("####", "The answer is")
            samples.append(InstructionSample.single_turn(question, answer))
        order = sorted(range(len(samples)), key=lambda i: rank_key(params["seed"], i))
        owner = {i: pos % n for pos, i in enumerate(order)}
        clients: dict[str, list[InstructionSample]] = {f"client_{c}": [] for c in range(n)}
        for i, s in enumerate(samples):
            clients[f"client_{owner[i]}"].append(s)
        return Built({cid: s for cid, s in clients.items() if s})


# --------------------------------------------------------------------------------------------
# Fed-CodeSearchNet
# --------------------------------------------------------------------------------------------

CSN_LANGUAGES: tuple[str, ...] = ("go", "java", "javascript", "php", "python", "ruby")


@register_source("fed-codesearchnet")
class FedCodeSearchNet(PublicSource):
    """Fed-CodeSearchNet: write a function from its docstring, one client per language."""

    description = (
        "FS-LLM Fed-CodeSearchNet: code_search_net, docstring -> function code, one client per language "
        "(6 clients), a seeded sample of at most max_samples_per_client (default 10,000) each."
    )
    hub_id = "code_search_net"
    hub_config = "all"
    required_fields = ("language", "func_documentation_string", "func_code_string")
    construction = (
        "sample = '<language> <func_documentation_string>' -> func_code_string; one client per `language` in "
        "`languages` with >= min_samples; at most max_samples_per_client per client, the smallest "
        "blake2b(seed, language, index) ranks, in source order."
    )
    default_kwargs = MappingProxyType(
        {**INPUT_KWARGS, "hub_id": hub_id, "languages": CSN_LANGUAGES, "max_samples_per_client": 10_000, "seed": 0,
         "min_samples": 1}
    )

    def construct(self, rows: Iterable[Row], params: Mapping[str, Any], drops: Drops) -> Built:
        cap, seed, languages = params["max_samples_per_client"], params["seed"], set(params["languages"])
        if cap is not None and cap < 1:
            raise ValueError(f"{self.name}: max_samples_per_client must be >= 1 or None, got {cap}")
        heaps: dict[str, list[tuple[int, int, InstructionSample]]] = defaultdict(list)  # (-rank, index, sample)
        seen: dict[str, int] = defaultdict(int)
        for row in rows:
            language = text_field(row, "language", self.name)
            if language not in languages:
                drops.row("language_not_selected")
                continue
            doc, code = text_field(row, "func_documentation_string", self.name), text_field(row, "func_code_string", self.name)
            if doc is None or code is None:
                drops.row("empty_text")
                continue
            index = seen[language]
            seen[language] += 1
            item = (-int.from_bytes(rank_key(seed, language, index), "big"), index,
                    InstructionSample.single_turn(f"{language} {doc}", code))
            heap = heaps[language]
            if cap is None or len(heap) < cap:
                heapq.heappush(heap, item)
            else:
                heapq.heappushpop(heap, item)  # keeps the `cap` smallest ranks in O(cap) memory
        groups = {lang: [s for _, _, s in sorted(heap, key=lambda t: t[1])] for lang, heap in heaps.items()}
        kept = select_clients({lang: [None] * seen[lang] for lang in groups}, drops, min_samples=params["min_samples"])
        for lang in kept:
            drops.row("over_client_cap", seen[lang] - len(groups[lang]))
        return Built({lang: groups[lang] for lang in kept}, {lang: {"available": seen[lang]} for lang in kept})
