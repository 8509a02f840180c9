"""The PNG figures of the dataset card. Per-client figures draw one box or bar per client up to
MAX_LABELLED clients (sorted by size, largest first); beyond that they show the distribution of the
per-client values instead. Figures are built on matplotlib.figure.Figure (no pyplot global state)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

MAX_LABELLED = 50
LABEL_CHARS = 18
DPI = 120


def short(label: str, width: int = LABEL_CHARS) -> str:
    """The label, or its start and end around an ellipsis (ids often share a prefix and differ at the end)."""
    if len(label) <= width:
        return label
    head = (width - 1) // 2
    return label[:head] + "…" + label[-(width - 1 - head):]


def _save(fig: Figure, out_dir: Path, name: str) -> str:
    fig.savefig(out_dir / name, dpi=DPI, bbox_inches="tight")
    return name


def _width(n: int) -> float:
    return float(min(18.0, max(7.0, 0.3 * n + 2.5)))


def _label_clients(ax: Any, ids: Sequence[str]) -> None:
    ax.set_xticks(range(1, len(ids) + 1))
    ax.set_xticklabels([short(c) for c in ids], rotation=60, ha="right", fontsize=8)
    ax.set_xlim(0.4, len(ids) + 0.6)


def _log_if_wide(ax: Any, values: Sequence[float], axis: str = "y") -> None:
    """Log scale when the positive values span more than two decades."""
    pos = [v for v in values if v > 0]
    if pos and max(pos) / min(pos) > 100:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def quantity(out_dir: Path, sizes: dict[str, int], title: str) -> str:
    """Samples per client: a sorted bar chart, or for many clients the sorted curve and a histogram."""
    ids = sorted(sizes, key=lambda c: -sizes[c])
    values = [sizes[c] for c in ids]
    if len(ids) <= MAX_LABELLED:
        fig = Figure(figsize=(_width(len(ids)), 4.2), layout="constrained")
        ax = fig.subplots()
        ax.bar(range(1, len(ids) + 1), values, color="tab:blue")
        _label_clients(ax, ids)
        ax.set_ylabel("samples")
        ax.axhline(float(np.mean(values)), color="tab:red", ls="--", lw=1, label=f"mean {np.mean(values):.1f}")
        ax.legend(fontsize=8)
    else:
        fig = Figure(figsize=(11, 4.2), layout="constrained")
        ax, ax2 = fig.subplots(1, 2)
        ax.plot(range(1, len(values) + 1), values, color="tab:blue")
        ax.set_xlabel("client rank (by samples)")
        ax.set_ylabel("samples")
        _log_if_wide(ax, values)
        ax2.hist(values, bins=min(40, max(5, len(values) // 5)), color="tab:blue")
        ax2.set_xlabel("samples per client")
        ax2.set_ylabel("clients")
    fig.suptitle(f"{title}: samples per client ({len(ids)} clients, {sum(values)} samples)")
    return _save(fig, out_dir, "quantity.png")


def lengths(out_dir: Path, order: Sequence[str], per_client: dict[str, dict[str, list[int]]], title: str) -> str:
    """Instruction and response tokens: box plots per client, or histograms of the per-client means."""
    ids = [c for c in order if per_client.get(c, {}).get("instruction")]
    kinds = (("instruction", "instruction tokens"), ("response", "response tokens"))
    if len(ids) <= MAX_LABELLED:
        fig = Figure(figsize=(_width(len(ids)), 7.5), layout="constrained")
        axes = fig.subplots(2, 1, sharex=True)
        for ax, (key, label) in zip(axes, kinds):
            data = [per_client[c][key] for c in ids]
            ax.boxplot(data, showfliers=True, flierprops={"markersize": 2, "alpha": 0.4},
                       medianprops={"color": "tab:red"})
            ax.set_ylabel(label)
            _log_if_wide(ax, [v for d in data for v in d])
            ax.grid(axis="y", alpha=0.3)
        _label_clients(axes[-1], ids)
        axes[0].set_title("per client (box: quartiles, line: median); clients by size, largest first", fontsize=9)
    else:
        fig = Figure(figsize=(11, 4.2), layout="constrained")
        axes = fig.subplots(1, 2)
        for ax, (key, label) in zip(axes, kinds):
            means = [float(np.mean(per_client[c][key])) for c in ids]
            ax.hist(means, bins=min(40, max(5, len(means) // 5)), color="tab:green")
            ax.set_xlabel(f"per-client mean {label}")
            ax.set_ylabel("clients")
    fig.suptitle(f"{title}: lengths in tokens")
    return _save(fig, out_dir, "lengths.png")


def languages(out_dir: Path, order: Sequence[str], langs: dict[str, Counter[str]], title: str) -> str:
    """Clients per dominant language, and each client's language shares (stacked) when few enough."""
    ids = [c for c in order if c in langs]
    dominant = Counter(langs[c].most_common(1)[0][0] for c in ids)
    top = [lang for lang, _ in dominant.most_common(25)]
    if len(ids) <= MAX_LABELLED:
        fig = Figure(figsize=(_width(len(ids)) + 4, 4.5), layout="constrained")
        ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2.5]})
    else:
        fig = Figure(figsize=(7, 4.5), layout="constrained")
        ax, ax2 = fig.subplots(), None
    ax.barh(range(len(top)), [dominant[lang] for lang in top], color="tab:purple")
    ax.set_yticks(range(len(top)))
    ax.set_yticklabels(top, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("clients (by dominant language)")
    if ax2 is not None:
        all_langs = [lang for lang, _ in sum((langs[c] for c in ids), Counter()).most_common(9)]
        bottom = np.zeros(len(ids))
        for lang in [*all_langs, "other"]:
            shares = np.array([
                (langs[c][lang] if lang != "other" else sum(v for k, v in langs[c].items() if k not in all_langs))
                / sum(langs[c].values()) for c in ids
            ])
            if shares.any():
                ax2.bar(range(1, len(ids) + 1), shares, bottom=bottom, label=lang)
                bottom += shares
        _label_clients(ax2, ids)
        ax2.set_ylabel("share of client's samples")
        ax2.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.suptitle(f"{title}: languages of clients")
    return _save(fig, out_dir, "languages.png")


def ifd(out_dir: Path, order: Sequence[str], values: dict[str, list[float]], title: str, cap: int) -> str:
    """IFD per client (box plots of the scored samples), or a histogram of per-client means."""
    ids = [c for c in order if any(np.isfinite(values.get(c, [])))]
    data = [[v for v in values[c] if np.isfinite(v)] for c in ids]
    if len(ids) <= MAX_LABELLED:
        fig = Figure(figsize=(_width(len(ids)), 4.5), layout="constrained")
        ax = fig.subplots()
        ax.boxplot(data, medianprops={"color": "tab:red"}, showfliers=False)  # every point is drawn below
        for i, d in enumerate(data, start=1):
            ax.scatter(np.full(len(d), i) + np.linspace(-0.15, 0.15, len(d)), d, s=6, color="tab:blue", alpha=0.6)
        _label_clients(ax, ids)
        ax.set_ylabel("IFD = loss(response | instruction) / loss(response)")
    else:
        fig = Figure(figsize=(7, 4.2), layout="constrained")
        ax = fig.subplots()
        ax.hist([float(np.mean(d)) for d in data], bins=min(40, max(5, len(data) // 5)), color="tab:orange")
        ax.set_xlabel("per-client mean IFD")
        ax.set_ylabel("clients")
    if len(ids) <= MAX_LABELLED:
        ax.axhline(1.0, color="grey", ls=":", lw=1)
    else:
        ax.axvline(1.0, color="grey", ls=":", lw=1)
    fig.suptitle(f"{title}: data quality by IFD (up to {cap} samples per client)")
    return _save(fig, out_dir, "ifd.png")


def preference(out_dir: Path, order: Sequence[str], length_pref: dict[str, float],
               quality_pref: dict[str, float], title: str) -> str:
    """Per client: share of pairs with the longer reply chosen, and mean IFD(chosen) − IFD(rejected)."""
    panels = [("length preference: share of chosen longer than rejected", length_pref, 0.5)]
    if any(np.isfinite(list(quality_pref.values()))):
        panels.append(("quality preference: mean IFD(chosen) − IFD(rejected)", quality_pref, 0.0))
    ids = [c for c in order if c in length_pref]
    many = len(ids) > MAX_LABELLED
    fig = Figure(figsize=(_width(len(ids)) if not many else 11, 3.6 * len(panels) if not many else 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(panels), 1, sharex=True) if not many else fig.subplots(1, len(panels)))
    for ax, (label, values, ref) in zip(axes, panels):
        vals = [values.get(c, float("nan")) for c in ids]
        if many:
            ax.hist([v for v in vals if np.isfinite(v)], bins=30, color="tab:cyan")
            ax.axvline(ref, color="grey", ls=":")
            ax.set_xlabel(label, fontsize=9)
            ax.set_ylabel("clients")
        else:
            ax.bar(range(1, len(ids) + 1), np.nan_to_num(vals), color="tab:cyan")
            ax.axhline(ref, color="grey", ls=":", lw=1)
            ax.set_title(label, fontsize=9)
    if not many:
        _label_clients(axes[-1], ids)
        axes[0].set_ylim(0, 1)
    fig.suptitle(f"{title}: preferences of clients")
    return _save(fig, out_dir, "preference.png")


def embeddings(out_dir: Path, points: np.ndarray, owners: Sequence[str], title: str, perplexity: float,
               embedder: str) -> str:
    """t-SNE scatter, one colour per client."""
    fig = Figure(figsize=(8.5, 6), layout="constrained")
    ax = fig.subplots()
    clients = list(dict.fromkeys(owners))
    colours = [f"C{i}" for i in range(10)]
    markers = "o^sD"
    owner_arr = np.asarray(owners)
    for i, cid in enumerate(clients):
        sel = owner_arr == cid
        ax.scatter(points[sel, 0], points[sel, 1], s=14, alpha=0.75, color=colours[i % 10],
                   marker=markers[(i // 10) % len(markers)], label=f"{short(cid)} ({int(sel.sum())})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left", title="client (points)", title_fontsize=8)
    ax.set_title(f"{title}: t-SNE of {embedder} embeddings of instruction–response pairs "
                 f"(perplexity {perplexity:.1f})", fontsize=9)
    return _save(fig, out_dir, "embeddings_tsne.png")


def root_verbs(out_dir: Path, order: Sequence[str], verbs: dict[str, Counter[str]], title: str, top: int = 15) -> str:
    """Share of each client's parsed instructions per top root verb (heatmap), or the overall top verbs."""
    total = sum(verbs.values(), Counter())
    top_verbs = [v for v, _ in total.most_common(top)]
    ids = [c for c in order if sum(verbs.get(c, Counter()).values())]
    if len(ids) <= MAX_LABELLED:
        grid = np.array([[verbs[c][v] / sum(verbs[c].values()) for v in top_verbs] for c in ids])
        fig = Figure(figsize=(max(6.0, 0.45 * len(top_verbs) + 3), max(3.5, 0.3 * len(ids) + 1.8)), layout="constrained")
        ax = fig.subplots()
        im = ax.imshow(grid, aspect="auto", cmap="Blues", vmin=0, vmax=max(float(grid.max()), 1e-9))
        ax.set_xticks(range(len(top_verbs)))
        ax.set_xticklabels(top_verbs, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(ids)))
        ax.set_yticklabels([short(c) for c in ids], fontsize=8)
        fig.colorbar(im, ax=ax, label="share of the client's instructions")
    else:
        fig = Figure(figsize=(7, 4.5), layout="constrained")
        ax = fig.subplots()
        ax.barh(range(len(top_verbs)), [total[v] for v in top_verbs], color="tab:blue")
        ax.set_yticks(range(len(top_verbs)))
        ax.set_yticklabels(top_verbs)
        ax.invert_yaxis()
        ax.set_xlabel("instructions")
    fig.suptitle(f"{title}: top root verbs of instructions")
    return _save(fig, out_dir, "root_verbs.png")
