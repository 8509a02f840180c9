"""Run every statistic of a federation and write stats.json, the PNG figures and the README card."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

from rich.console import Console

from fedllm.data.schema import FederatedDataset
from fedllm.describe import describe, mean_std
from fedllm.hashing import stable_hash
from fedllm.jsonl import JsonlCache, atomic_write, dumps, json_safe
from fedllm.models.embedder import MINILM_NAME, Embedder, minilm_embedder
from fedllm.stats import card, figures, truncation
from fedllm.stats.corpus import Federation, from_dataset, load_federation
from fedllm.stats.embeddings import MIN_POINTS, embed_clients, tsne_2d
from fedllm.stats.ifd import RowLossFn, client_summary, compute_ifd, row_loss_sums
from fedllm.stats.lengths import length_preference, token_lengths
from fedllm.stats.verbs import SKIP_MESSAGE, VerbParser, root_verbs, spacy_parser

AUTO = "auto"


@dataclass
class StatsOptions:
    """What to compute and how much of it (the caps keep a CPU run to minutes)."""

    max_samples_per_client: int = 8  # IFD: samples scored per client
    ifd: bool = True
    embeddings: bool = True
    root_verbs: bool = True
    seed: int = 0
    template: str = "chat"
    max_length: int = 1024  # IFD: tokens per rendered sample (the prompt is cut from the left first)
    train_max_length: int = 384  # truncation count: the run's data.max_length (its default)
    embed_clients: int = 10
    embed_per_client: int = 50
    verbs_per_client: int = 200


def stats_cache_dir(root: Path | None = None) -> Path:
    """Where per-sample IFD and embedding results are cached: <cache root>/stats/cache/."""
    from fedllm.data.sources import default_cache_dir

    return (root or default_cache_dir()) / "stats" / "cache"


def default_out_dir(name: str) -> Path:
    from fedllm.data.sources import default_cache_dir

    return default_cache_dir() / "stats" / name


class _LazyMiniLM:
    """all-MiniLM-L6-v2, loaded on the first call only (a fully cached run never loads it)."""

    name = MINILM_NAME

    def __init__(self) -> None:
        self._embed: Embedder | None = None

    def __call__(self, texts: list[str]) -> Any:
        if self._embed is None:
            self._embed = minilm_embedder()
        return self._embed(texts)


def _model_id(base: Any) -> str:
    model = base.model
    return stable_hash(base.source, getattr(model.config, "_name_or_path", ""), type(model).__name__,
                       sum(p.numel() for p in model.parameters()))


def _template(name: str, tokenizer: Any, notes: list[str]) -> Any:
    from fedllm.data.formatting import TemplateError, get_template

    try:
        return get_template(name, tokenizer)
    except TemplateError as e:
        notes.append(f"template {name!r} unusable ({e}); IFD and the truncation count used the 'alpaca' template instead")
        return get_template("alpaca", tokenizer)


def analyze(
    data: Union[Federation, FederatedDataset],
    out_dir: str | Path,
    base: Any,
    *,
    options: StatsOptions | None = None,
    model_name: str | None = None,
    cache_dir: str | Path | None = None,
    embedder: Embedder | None = None,
    verb_parser: Union[VerbParser, str, None] = AUTO,
    loss_fn: RowLossFn = row_loss_sums,
    console: Console | None = None,
) -> dict[str, Any]:
    """All statistics of `data` with the loaded model `base` (a models.loading.BaseModel); writes
    stats.json, README.md and the figures into `out_dir` and returns the stats.

    `embedder` (texts -> vectors) defaults to all-MiniLM-L6-v2; `verb_parser` is "auto" (spaCy if
    installed), None (skip) or a callable texts -> root verbs; `loss_fn` computes per-row loss sums.
    """
    opts = options or StatsOptions()
    fed = data if isinstance(data, Federation) else from_dataset(data)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else stats_cache_dir()
    say = console.print if console is not None else (lambda *a, **k: None)
    notes: list[str] = []
    timings: dict[str, float] = {}
    figs: dict[str, str] = {}
    for problem in fed.problems:
        say(f"[yellow]problem:[/] {problem}", highlight=False)

    sizes = {cid: len(s) for cid, s in fed.clients.items()}
    order = sorted(sizes, key=lambda c: -sizes[c])  # stable: ties keep federation order
    kinds = fed.kinds
    clients: dict[str, dict[str, Any]] = {
        cid: {"id": cid, "samples": sizes[cid], "kind": kinds.get(cid)} for cid in fed.clients
    }

    t0 = time.perf_counter()
    lengths = token_lengths(fed, base.tokenizer, console)
    for cid, entry in lengths.items():
        for key, values in entry.items():
            clients[cid][f"{key}_tokens"] = describe(values)
        if "rejected" in entry:
            clients[cid]["length_preference"] = length_preference(entry["response"], entry["rejected"])
    timings["token_lengths"] = time.perf_counter() - t0

    template = _template(opts.template, base.tokenizer, notes)
    t0 = time.perf_counter()
    lost = truncation.truncated_to_nothing(fed, template, base.tokenizer, opts.train_max_length, console)
    truncated = truncation.summary(lost, sum(sizes.values()), opts.train_max_length, template.name)
    timings["truncation"] = time.perf_counter() - t0

    ifd_info: dict[str, Any] = {"computed": False}
    if opts.ifd:
        t0 = time.perf_counter()
        result = compute_ifd(
            fed, base.model, base.tokenizer, template, model_id=_model_id(base),
            max_samples_per_client=opts.max_samples_per_client, max_length=opts.max_length, seed=opts.seed,
            cache_dir=cache, autocast=base.precision.autocast, loss_fn=loss_fn, console=console,
        )
        for cid, entry in result.per_client.items():
            summary = client_summary(entry)
            clients[cid]["ifd"] = {**entry, "mean": summary["mean"], "n": summary["n"]}
            if "quality_preference" in summary:
                clients[cid]["quality_preference"] = summary["quality_preference"]
        timings["ifd"] = time.perf_counter() - t0
        ifd_info = {"computed": True, "replies_scored_now": result.computed, "replies_from_cache": result.cached,
                    "cache_file": result.cache_file}
        say(f"IFD: {result.computed} replies scored, {result.cached} from the cache")
    else:
        notes.append("IFD not computed (--no-ifd): the data-quality column and figure are left out")

    embed_info: dict[str, Any] = {"computed": False}
    if opts.embeddings:
        t0 = time.perf_counter()
        vectors, owners = embed_clients(fed, embedder or _LazyMiniLM(), num_clients=opts.embed_clients,
                                        per_client=opts.embed_per_client, seed=opts.seed, cache_dir=cache,
                                        console=console)
        if len(owners) >= MIN_POINTS:
            points, perplexity = tsne_2d(vectors, opts.seed, JsonlCache(cache / "tsne.jsonl"))
            embedder_name = getattr(embedder, "name", "custom embedder") if embedder else _LazyMiniLM.name
            figs["embeddings"] = figures.embeddings(out, points, owners, fed.name, perplexity, embedder_name)
            embed_info = {"computed": True, "clients": list(dict.fromkeys(owners)), "points": len(owners),
                          "perplexity": perplexity, "dim": int(vectors.shape[1]), "embedder": embedder_name}
        else:
            notes.append(f"embedding figure skipped: {len(owners)} samples, t-SNE needs at least {MIN_POINTS}")
        timings["embeddings"] = time.perf_counter() - t0
    else:
        notes.append("embeddings not computed (--no-embeddings): the t-SNE figure is left out")

    verbs_info: dict[str, Any] = {"computed": False}
    if opts.root_verbs and verb_parser is not None:
        parser = spacy_parser() if verb_parser == AUTO else verb_parser
        if parser is None:
            say(SKIP_MESSAGE, highlight=False, markup=False, soft_wrap=True)
            verbs_info["skipped"] = SKIP_MESSAGE
        else:
            t0 = time.perf_counter()
            verbs = root_verbs(fed, parser, per_client=opts.verbs_per_client, seed=opts.seed, console=console)  # type: ignore[arg-type]
            for cid, counts in verbs.items():
                clients[cid]["top_verbs"] = counts.most_common(5)
            if sum(verbs.values(), Counter()):
                figs["root_verbs"] = figures.root_verbs(out, order, verbs, fed.name)
            verbs_info = {"computed": True, "top_overall": sum(verbs.values(), Counter()).most_common(20)}
            timings["root_verbs"] = time.perf_counter() - t0

    figs["quantity"] = figures.quantity(out, sizes, fed.name)
    if any(lengths[c]["instruction"] for c in lengths):
        figs["lengths"] = figures.lengths(out, order, lengths, fed.name)
    if fed.languages:
        figs["languages"] = figures.languages(out, order, fed.languages, fed.name)
        for cid, counts in fed.languages.items():
            clients[cid]["languages"] = dict(counts)
    if opts.ifd and any(c.get("ifd", {}).get("n") for c in clients.values()):
        values = {cid: c["ifd"].get("response", c["ifd"].get("chosen", [])) for cid, c in clients.items() if "ifd" in c}
        figs["ifd"] = figures.ifd(out, order, values, fed.name, opts.max_samples_per_client)
    pref = {cid: c["length_preference"] for cid, c in clients.items() if "length_preference" in c}
    if pref:
        quality = {cid: c.get("quality_preference", float("nan")) for cid, c in clients.items()}
        figs["preference"] = figures.preference(out, order, pref, quality, fed.name)

    stats = {
        "dataset": {"name": fed.name, "source": fed.source, "content_hash": fed.content_hash(),
                    "kinds": dict(Counter(k for k in kinds.values())),
                    "language_source": fed.language_source},
        "settings": {**asdict(opts), "model": model_name or base.source, "tokenizer": base.source,
                     "template": template.name, "std": "population (ddof=0) over clients"},
        "table1": table1(fed.name, clients, opts.ifd),
        "truncated_to_nothing": truncated,
        "fixups": {"total": dict(sorted(sum(fed.fixups.values(), Counter()).items())),
                   "per_client": {cid: dict(sorted(c.items())) for cid, c in fed.fixups.items()}},
        "clients": list(clients.values()),
        "ifd": ifd_info,
        "embeddings": embed_info,
        "root_verbs": verbs_info,
        "problems": list(fed.problems),
        "notes": notes,
        "figures": figs,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    stats = json_safe(stats)
    atomic_write(out / "stats.json", lambda f: f.write(dumps(stats, indent=2) + "\n"))
    atomic_write(out / "README.md", lambda f: f.write(card.render(stats)))
    return stats


def table1(name: str, clients: dict[str, dict[str, Any]], with_ifd: bool) -> dict[str, Any]:
    """FedLLM-Bench Table 1 row: sizes over all clients; lengths and IFD as mean ± std over the clients
    that have them of the per-client means."""
    rows = list(clients.values())
    per_client_mean = lambda key: [c[key]["mean"] for c in rows if key in c and c[key].get("n")]  # noqa: E731
    return {
        "dataset": name,
        "clients": len(rows),
        "total_samples": sum(c["samples"] for c in rows),
        "samples_per_client": mean_std(c["samples"] for c in rows),
        "instruction_tokens": mean_std(per_client_mean("instruction_tokens")),
        "response_tokens": mean_std(per_client_mean("response_tokens")),
        "ifd": mean_std(per_client_mean("ifd")) if with_ifd else None,
    }


def run_stats(
    name_or_path: str,
    out_dir: str | Path | None = None,
    *,
    model: str = "smollm2-135m-instruct",
    options: StatsOptions | None = None,
    console: Console | None = None,
    **kwargs: Any,
) -> tuple[Path, dict[str, Any]]:
    """`fedllm data stats`: load the federation and the model, analyse, write; (out dir, stats)."""
    from fedllm.config import build_config
    from fedllm.models.loading import load_base_model

    fed = load_federation(name_or_path)
    out = Path(out_dir) if out_dir is not None else default_out_dir(fed.name)
    cfg = build_config({"model": {"name": model}}).model
    base = load_base_model(cfg)
    return out, analyze(fed, out, base, options=options, model_name=model, console=console, **kwargs)
