"""Fed-PyCode-PA: an offline preference (DPO) federation derived from Fed-PyCode.

Why: DPO needs (prompt, chosen, rejected) triples, and the only preference federations of the papers
(Fed-ChatbotPA) must be downloaded. Fed-PyCode (:mod:`fedllm.data.sources.fed_pycode`) is built from
the installed packages, so a preference set derived from it lets DPO run with no download on the
embedded model, with the same clients (one per installed distribution: natural quantity, domain and
style skew).

Construction. For every Fed-PyCode client (distribution) and every sample of it:

* prompt   = the sample's instruction (the function's signature and docstring, as in Fed-PyCode);
* chosen   = the sample's response: the function's real implementation;
* rejected = the response of ANOTHER sample of the same client: real code from the same package, in
  the same style and vocabulary, but not what the docstring asks for. Within a client these are hard,
  realistic negatives (an answer from another client would be told apart by its style alone).

Pairing rule (exact; :func:`pair_client`). A client's n samples are indexed 0..n-1 in file order
and ``L[i]`` is the length in characters of response i (as written, code fences included). A pair
(i, j) is *good* when j != i, the two responses are not the same text, and
``max(L[i], L[j]) <= 2 * min(L[i], L[j])`` (lengths within a factor of 2, so that length alone does
not tell chosen from rejected).

1. ``rng = numpy.random.default_rng([seed, derive_seed("fed-pycode-pa", client_id)])``;
   ``p = rng.permutation(n)``; the partner of ``p[k]`` is ``p[(k + 1) % n]``: a seeded random
   derangement (a single n-cycle, so no sample is its own partner). A client's pairs depend only on
   `seed`, its id and its samples, not on which other clients were built.
2. Repair, keeping a derangement: for each i in the order of ``p`` whose pair (i, partner[i]) is not
   good (at the time it is reached):

   a. swap the partners of i and j at the first j (in the order of ``p``) for which both
      (i, partner[j]) and (j, partner[i]) are good;
   b. if there is no such j, rotate: at the first (j, k) (j in the order of ``p``, then k in the
      order of ``p``; i, j, k distinct) for which (i, partner[j]), (j, partner[k]) and
      (k, partner[i]) are all good, set partner[i], partner[j], partner[k] = partner[j],
      partner[k], partner[i];
   c. if there is neither, i keeps its partner.

   This repair is greedy and local: it can leave a pair that a global rearrangement would fix (on
   the default build it leaves none).

   A repair only hands good partners to the samples it touches, never creates a fixed point, and
   keeps the partners a permutation: every implementation is the rejected answer exactly once (and
   the chosen one exactly once), so no text is a priori more likely to be rejected; only its match
   with the prompt decides.
3. A pair still not good is kept if only its lengths differ by more than 2× (counted as
   ``length_ratio_over_2``), and skipped if its two responses are the same text (counted as
   ``identical_implementations``; Fed-PyCode already drops whitespace-normalised duplicate code,
   so this does not happen on its own builds). A client with fewer than 2 samples cannot be paired
   and is skipped (``single_sample_client``). Pairs are written in the client's file order.

Caveats (also in the data card, README.md, written next to the data file): the negative is
off-topic code, not a plausibly wrong answer to the same question, so the set tests and trains
whether a model prefers code that matches its docstring, not finer correctness; the rejected code
also starts with another function's ``def`` line, so the signature alone often separates the pair.
Each implementation is a chosen answer in one pair and a rejected one in another, so after the
per-client train/test split a held-out pair's texts also occur in training pairs (in the other
role). A model fine-tuned on Fed-PyCode has seen every chosen answer.

Build options: Fed-PyCode's (passed through to its own build, whose cache is reused) plus ``seed``.
The cache key is derived from this builder's version, ``seed`` and Fed-PyCode's cache key (which
covers its parameters and the installed versions); the build directory holds the FedLLM-Bench file,
``README.md`` and ``manifest.json`` (written last), staged and renamed into place as for every source.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from fedllm.data.fedllm_bench import read_fedllm_bench, write_fedllm_bench
from fedllm.data.schema import DataError, InstructionSample, Message, PreferenceSample
from fedllm.data.sources import DatasetSource, fed_pycode, get_source, register_source
from fedllm.data.sources.builds import (
    MANIFEST_FILE,
    build_key,
    file_sha256,
    read_build_manifest,
    say,
    staging,
)
from fedllm.jsonl import atomic_write
from fedllm.seeding import derive_seed

__all__ = [
    "BUILDER_VERSION",
    "CARD_FILE",
    "DATA_FILE",
    "MAX_LENGTH_RATIO",
    "FedPyCodePA",
    "Pairing",
    "build_fed_pycode_pa",
    "pair_client",
]

BUILDER_VERSION = 1  # bump when the pairing or the output changes: it is part of the cache key
NAME = "fed-pycode-pa"
DATA_FILE = f"{NAME}.json"
CARD_FILE = "README.md"
MAX_LENGTH_RATIO = 2.0

CONSTRUCTION = (
    "Per Fed-PyCode client: prompt = a sample's instruction (signature + docstring), chosen = its real "
    "implementation, rejected = the implementation of another function of the same client. Partners: a "
    "seeded random derangement (numpy default_rng([seed, derive_seed('fed-pycode-pa', client)]); "
    "p = permutation(n); partner(p[k]) = p[k+1 mod n]), then, in the order of p, a pair with identical "
    "texts or lengths more than 2x apart is repaired by swapping partners with the first j that makes both "
    "pairs good, else by rotating partners among the first (j, k) that makes all three good; partners stay "
    "a permutation, so every implementation is rejected exactly once. Pairs left with identical texts are "
    "skipped; pairs left with a length ratio over 2 are kept and counted."
)


# --------------------------------------------------------------------------------------------
# Pairing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pairing:
    """The partners of one client's samples: partner[i] is the sample whose response is i's rejected
    answer, or None when i is skipped; plus the counts the manifest and the data card report."""

    partner: tuple[int | None, ...]
    from_derangement: int  # pairs whose partner is the one the seeded derangement gave
    repairs: int  # swaps and rotations made in step 2
    length_ratio_over_2: int  # kept pairs whose lengths are still more than 2x apart
    identical_implementations: int  # skipped pairs (same text)


def _client_rng(seed: int, client_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, derive_seed(NAME, client_id)])


def pair_client(responses: Sequence[str], seed: int, client_id: str) -> Pairing:
    """Partners of one client's samples by the module's pairing rule (a seeded, repaired derangement)."""
    n = len(responses)
    if n < 2:
        return Pairing((None,) * n, 0, 0, 0, 0)
    lengths = [len(r) for r in responses]

    def good(i: int, j: int) -> bool:
        a, b = lengths[i], lengths[j]
        return i != j and max(a, b) <= MAX_LENGTH_RATIO * min(a, b) and responses[i] != responses[j]

    order = [int(k) for k in _client_rng(seed, client_id).permutation(n)]
    partner = [0] * n
    for k, i in enumerate(order):
        partner[i] = order[(k + 1) % n]
    initial = list(partner)
    repairs = 0
    for i in order:
        if good(i, partner[i]):
            continue
        # 2a: swap with the first j that makes both pairs good.
        j = next((j for j in order if good(i, partner[j]) and good(j, partner[i])), None)
        if j is not None:
            partner[i], partner[j] = partner[j], partner[i]
            repairs += 1
            continue
        # 2b: rotate i -> partner[j], j -> partner[k], k -> partner[i] at the first (j, k) making all good.
        js = [j for j in order if j != i and good(i, partner[j])]
        ks = [k for k in order if k != i and good(k, partner[i])]
        jk = next(((j, k) for j in js for k in ks if j != k and good(j, partner[k])), None)
        if jk is not None:
            j, k = jk
            partner[i], partner[j], partner[k] = partner[j], partner[k], partner[i]
            repairs += 1
    out: list[int | None] = []
    over = identical = 0
    for i, j in enumerate(partner):
        if responses[i] == responses[j]:
            identical += 1
            out.append(None)
            continue
        if max(lengths[i], lengths[j]) > MAX_LENGTH_RATIO * min(lengths[i], lengths[j]):
            over += 1
        out.append(j)
    same = sum(1 for i, j in enumerate(out) if j is not None and j == initial[i])
    return Pairing(tuple(out), same, repairs, over, identical)


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------


def _split_kwargs(params: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """(seed, Fed-PyCode's build options) of resolved parameters."""
    seed = params["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"{NAME}: seed must be a non-negative integer, got {seed!r}")
    return seed, {k: v for k, v in params.items() if k != "seed"}


def _key(seed: int, upstream_key: str) -> str:
    return build_key({"builder": NAME, "version": BUILDER_VERSION, "seed": seed, "fed_pycode": upstream_key})


def _upstream_key(upstream_kwargs: Mapping[str, Any]) -> str:
    # Fed-PyCode's own cache key (its parameters and the installed versions), without building it.
    return fed_pycode._plan(upstream_kwargs).key


def _pairs(clients: Mapping[str, list[Any]], seed: int) -> tuple[dict[str, list[PreferenceSample]], dict[str, Any]]:
    """Preference pairs per client and per-client statistics."""
    out: dict[str, list[PreferenceSample]] = {}
    stats: dict[str, Any] = {}
    for cid, samples in clients.items():
        for i, s in enumerate(samples):
            if not isinstance(s, InstructionSample):
                raise DataError(f"{NAME}: client {cid!r}, record {i}: expected an instruction sample from Fed-PyCode")
        instructions = [s.instruction for s in samples]
        responses = [s.response for s in samples]
        pairing = pair_client(responses, seed, cid)
        pairs = [
            PreferenceSample((Message("user", instructions[i]),), responses[i], responses[j])
            for i, j in enumerate(pairing.partner)
            if j is not None
        ]
        longer = sum(len(p.chosen) > len(p.rejected) for p in pairs)
        stats[cid] = {
            "fed_pycode_samples": len(samples),
            "num_samples": len(pairs),
            "from_derangement": pairing.from_derangement,
            "repairs": pairing.repairs,
            "length_ratio_over_2": pairing.length_ratio_over_2,
            "chosen_longer": longer,
            "skipped": {k: v for k, v in {
                "identical_implementations": pairing.identical_implementations,
                "single_sample_client": len(samples) if len(samples) < 2 else 0,
            }.items() if v},
        }
        if pairs:
            out[cid] = pairs
    return out, stats


def _card(manifest: Mapping[str, Any]) -> str:
    """The data card (README.md) of a build."""
    n = manifest["num_samples"]
    over = sum(c["length_ratio_over_2"] for c in manifest["clients"].values())
    longer = sum(c["chosen_longer"] for c in manifest["clients"].values())
    skipped = ", ".join(f"{k} = {v}" for k, v in manifest["skipped"].items()) or "none"
    up = manifest["fed_pycode"]
    rows = "\n".join(
        f"| {cid} | {c['fed_pycode_samples']} | {c['num_samples']} | {c['repairs']} | {c['length_ratio_over_2']} | "
        f"{c['chosen_longer']} |"
        for cid, c in manifest["clients"].items()
    )
    return f"""# Fed-PyCode-PA

An offline federated **preference** dataset for DPO, derived from Fed-PyCode (public functions of the
installed Python distributions, one client per distribution). Built by `fedllm data build {NAME}`
with no download.

- Clients: {manifest['num_clients']} (one per distribution, as in Fed-PyCode)
- Pairs: {n} (from {manifest['fed_pycode_samples']} Fed-PyCode samples; skipped: {skipped})
- Seed: {manifest['params']['seed']}; Fed-PyCode build `{up['cache_key']}` (sha256 {up['content_sha256'][:16]}…)
- File: `{manifest['data_file']}` (FedLLM-Bench format, records `{{"prompt", "chosen", "rejected"}}`)

## Construction

For each Fed-PyCode sample of a client:

- **prompt**: the sample's instruction: "Implement the following Python function" with the
  function's signature and docstring;
- **chosen**: the function's real implementation (without its docstring);
- **rejected**: the implementation of **another function of the same client**: real code of the same
  package, in the same style and vocabulary, but not what the docstring asks for.

Pairing rule. The client's n samples are indexed in file order; L(i) is the length in characters
of response i. A pair (i, j) is *good* when j ≠ i, the two texts differ and the longer is at most
2× the shorter. (1) `rng = numpy.random.default_rng([seed, derive_seed("fed-pycode-pa", client)])`,
`p = rng.permutation(n)`, partner(p[k]) = p[(k+1) mod n]: a seeded derangement. (2) For each i in the
order of p whose pair is not good: (a) the partners of i and the first j (in the order of p) for
which both (i, partner(j)) and (j, partner(i)) are good are swapped; (b) failing that, the partners
of i, j, k are rotated (i gets partner(j), j gets partner(k), k gets partner(i)) at the first (j, k)
(in the order of p) for which all three pairs are good; (c) failing that, i keeps its partner
(a greedy, local repair: it may leave a pair that a global rearrangement would fix).
Partners stay a permutation with no fixed point, so every implementation is rejected exactly once
and chosen exactly once. (3) Pairs
left with identical texts are skipped; pairs left more than 2× apart in length are kept
({over} of {n} here).

Length does not give the answer away: the chosen reply is the longer one in {longer} of {n} pairs
({100 * longer / max(n, 1):.1f}%).

## Counts per client

| client | Fed-PyCode samples | pairs | repairs | length ratio > 2 | chosen longer |
|---|---:|---:|---:|---:|---:|
{rows}

## Caveats

- The negative is **off-topic code, not a plausibly wrong answer**: the pair tests (and DPO trains)
  whether a model prefers code that matches its docstring, not whether it can tell correct code
  from subtly wrong code for the same task. It is an easy preference task for a capable model.
- The rejected code starts with another function's `def` line, so the signature in the prompt
  often separates the pair on its own.
- Every implementation is the chosen reply of one pair and the rejected reply of another, so after
  the per-client train/test split a held-out pair's texts also occur in training pairs (in the
  other role); a model fine-tuned on Fed-PyCode has seen every chosen reply.
- Not human preferences; the code keeps the licences of the packages it comes from; the content
  depends on the installed package versions (they key the cache, see manifest.json).
"""


def build_fed_pycode_pa(cache_root: str | os.PathLike[str], **params: Any) -> Path:
    """Build Fed-PyCode-PA under <cache_root>/datasets/fed-pycode-pa/<key>/ (or reuse a complete build)
    and return its data file. `params` are resolved build options (see `FedPyCodePA.default_kwargs`);
    Fed-PyCode is built (or its cache reused) first, through its registered source."""
    seed, upstream_kwargs = _split_kwargs(params)
    progress = bool(upstream_kwargs.get("progress", True))
    key = _key(seed, _upstream_key(upstream_kwargs))
    root = get_source(NAME).dataset_dir(cache_root)
    final = root / key
    if read_build_manifest(final, key) is not None:
        say(progress, f"{NAME}: using cached build {final}")
        return final / DATA_FILE
    start = time.perf_counter()
    upstream = get_source("fed-pycode").build(Path(cache_root), **upstream_kwargs)
    up_manifest = read_build_manifest(upstream.parent, upstream.parent.name)
    say(progress, f"{NAME}: pairing {upstream} (seed {seed}) -> {final}")
    clients = read_fedllm_bench(upstream)
    pairs, stats = _pairs(clients, seed)
    if not pairs:
        raise DataError(f"{NAME}: no client has 2 or more Fed-PyCode samples to pair")
    skipped: Counter[str] = Counter()
    for st in stats.values():
        skipped.update(st["skipped"])
    manifest: dict[str, Any] = {
        "dataset": NAME,
        "builder_version": BUILDER_VERSION,
        "cache_key": key,
        "construction": CONSTRUCTION,
        "params": {"seed": seed, "max_length_ratio": MAX_LENGTH_RATIO},
        "fed_pycode": {
            "cache_key": upstream.parent.name,
            "data_file": str(upstream),
            "content_sha256": file_sha256(upstream),
            "params": (up_manifest or {}).get("params"),
        },
        "data_file": DATA_FILE,
        "content_sha256": None,
        "fed_pycode_samples": sum(map(len, clients.values())),
        "num_clients": len(pairs),
        "num_samples": sum(map(len, pairs.values())),
        "clients": stats,
        "skipped": dict(sorted(skipped.items())),
    }
    with staging(root, key) as tmp:
        data = write_fedllm_bench(pairs, tmp / DATA_FILE)
        manifest["content_sha256"] = file_sha256(data)
        card = _card(manifest)
        atomic_write(tmp / CARD_FILE, lambda f: f.write(card))
        text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
        atomic_write(tmp / MANIFEST_FILE, lambda f: f.write(text))  # last: marks the build complete
    say(progress, format_summary(manifest, seconds=time.perf_counter() - start))
    return final / DATA_FILE


def format_summary(manifest: Mapping[str, Any], seconds: float | None = None) -> str:
    """Totals, per-client pairs and skips, as printed after a build."""
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    n = manifest["num_samples"]
    head = f"{NAME}: {manifest['num_clients']} clients, {n} pairs from {manifest['fed_pycode_samples']} Fed-PyCode samples"
    lines = [head + took]
    for cid, c in manifest["clients"].items():
        lines.append(f"  {cid:<18} {c['num_samples']:>5} pairs  repairs {c['repairs']:>3}  "
                     f"length ratio > 2: {c['length_ratio_over_2']}")
    over = sum(c["length_ratio_over_2"] for c in manifest["clients"].values())
    longer = sum(c["chosen_longer"] for c in manifest["clients"].values())
    skipped = ", ".join(f"{k}={v}" for k, v in manifest["skipped"].items()) or "none"
    lines.append(f"  skipped: {skipped}; length ratio > 2 kept: {over}; chosen longer: {longer}/{n}")
    return "\n".join(lines)


@register_source(NAME)
class FedPyCodePA(DatasetSource):
    """Fed-PyCode-PA: (docstring prompt, real implementation, another function of the same package)."""

    description = (
        "Offline DPO pairs from Fed-PyCode: prompt = a function's signature + docstring, chosen = its code, "
        "rejected = another function's code from the same package (seeded derangement, lengths within 2x); "
        "one client per distribution."
    )
    default_kwargs = MappingProxyType({**fed_pycode.FedPyCode.default_kwargs, "seed": 0})

    def build(self, cache_dir: Path, **kwargs: Any) -> Path:
        """Build or reuse <cache_dir>/datasets/fed-pycode-pa/<key>/ (Fed-PyCode's build reused or made
        under <cache_dir>/datasets/fed-pycode/); returns the data file."""
        return build_fed_pycode_pa(cache_dir, **self.resolve_kwargs(kwargs))

    def is_built(self, cache_dir: Path, **kwargs: Any) -> bool:
        """Whether a complete build for these arguments (and the installed versions) is cached."""
        try:
            seed, upstream_kwargs = _split_kwargs(self.resolve_kwargs(kwargs))
            key = _key(seed, _upstream_key(upstream_kwargs))
        except DataError:
            return False
        return read_build_manifest(self.dataset_dir(cache_dir) / key, key) is not None
