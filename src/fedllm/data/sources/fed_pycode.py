"""Fed-PyCode: an offline federated code-instruction dataset mined from installed Python packages.

Each installed distribution is a client: a different organisation's code, so quantity, domain and
style differ naturally and no synthetic partitioning is needed. A sample asks for a public function
given its signature and docstring (HumanEval style) and answers with the function's code, without
decorators and without the docstring (so the answer cannot copy the question). Everything is read
with ``ast`` from the files that ``importlib.metadata`` lists for the distribution, in sorted order,
so a build is a pure function of the installed versions and the build parameters; the cache key is
derived from exactly those.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import re
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fedllm.data.fedllm_bench import write_fedllm_bench
from fedllm.data.schema import DataError, InstructionSample
from fedllm.data.sources import DatasetSource, register_source
from fedllm.data.sources.builds import MANIFEST_FILE, build_key, file_sha256, read_build_manifest, say, staging
from fedllm.jsonl import atomic_write

__all__ = [
    "BUILDER_VERSION",
    "DEFAULT_DISTRIBUTIONS",
    "FedPyCode",
    "FilterParams",
    "FunctionSample",
    "build_fed_pycode",
    "cache_key",
    "extract_functions",
    "format_summary",
    "is_public_module",
]

BUILDER_VERSION = 1  # bump when extraction or formatting changes: it is part of the cache key
DATA_FILE = "fed-pycode.json"

# Distributions that fedllm itself installs (its dependencies and theirs) and that ship enough real
# Python source to give >= 40 samples; they span deep learning, numerics, symbolic maths, graphs,
# plotting, fonts, imaging, parsing, templating, CLIs, terminal UI, networking and file systems.
# (anyio, filelock, gguf, packaging, python-dateutil, pyyaml and typer are installed too but give
# fewer than 40 documented non-trivial public functions each.)
DEFAULT_DISTRIBUTIONS: tuple[str, ...] = (
    "accelerate",
    "click",
    "fonttools",
    "fsspec",
    "huggingface-hub",
    "jinja2",
    "markdown-it-py",
    "matplotlib",
    "mpmath",
    "networkx",
    "numpy",
    "peft",
    "pillow",
    "pydantic",
    "pygments",
    "pyparsing",
    "requests",
    "rich",
    "sympy",
    "torch",
    "tqdm",
    "transformers",
    "urllib3",
)

# What each default distribution's code is about: a client attribute to group clients by (`groups.by:
# domain`); a distribution outside this table has the domain "other".
DOMAINS: dict[str, str] = {
    "accelerate": "machine-learning", "peft": "machine-learning", "torch": "machine-learning",
    "transformers": "machine-learning", "huggingface-hub": "machine-learning",
    "numpy": "science", "mpmath": "science", "sympy": "science", "networkx": "science", "matplotlib": "science",
    "markdown-it-py": "text", "pygments": "text", "pyparsing": "text", "jinja2": "text",
    "click": "tooling", "rich": "tooling", "tqdm": "tooling", "pydantic": "tooling",
    "fsspec": "io", "requests": "io", "urllib3": "io", "pillow": "io", "fonttools": "io",
}

FUNCTION_PROMPT = "Implement the following Python function.\n\n```python\n{stub}\n```"
METHOD_PROMPT = "Implement the following method of the Python class `{cls}`.\n\n```python\n{stub}\n```"
RESPONSE = "```python\n{code}\n```"
_TEST_PARTS = {"test", "tests", "conftest"}


@dataclass(frozen=True)
class FilterParams:
    """Which functions make samples. `max_chars` bounds instruction+response characters
    (~4 characters a token: 1,500 keeps a sample within ~384 tokens, ~2.5 s of CPU training)."""

    min_docstring_chars: int = 20
    min_statements: int = 3
    min_body_lines: int = 3
    max_lines: int = 40
    max_chars: int = 1500


@dataclass(frozen=True)
class FunctionSample:
    """One extracted function: where it is from and the formatted instruction/response."""

    module: str
    qualname: str
    instruction: str
    response: str


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def _canonical(name: str) -> str:
    """PEP 503 normalised distribution name (client id)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _module_parts(relpath: str) -> list[str] | None:
    """'pkg/sub/mod.py' -> ['pkg', 'sub', 'mod'] ('__init__' dropped); None if not package source."""
    if not relpath.endswith(".py") or relpath.startswith(("..", "/")):
        return None
    parts = relpath[:-3].split("/")
    return parts[:-1] if parts[-1] == "__init__" else parts


def is_public_module(relpath: str) -> bool:
    """A .py file inside the distribution whose module path has no private or test component."""
    parts = _module_parts(relpath)
    if not parts:
        return False
    return not any(
        p.startswith("_") or p in _TEST_PARTS or p.startswith("test_") or p.endswith(("_test", "_tests"))
        for p in parts
    )


def _starts_line(node: ast.stmt, lines: list[str]) -> bool:
    line = lines[node.lineno - 1]
    return node.col_offset == len(line) - len(line.lstrip())


def _is_stub(stmt: ast.stmt) -> bool:
    """pass, `...`, or raise NotImplementedError[(...)]."""
    if isinstance(stmt, ast.Pass):
        return True
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
        return True  # `...` or a stray string
    if isinstance(stmt, ast.Raise) and stmt.exc is not None:
        exc = stmt.exc.func if isinstance(stmt.exc, ast.Call) else stmt.exc
        return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"
    return False


def _dedent(lines: list[str], indent: int) -> list[str] | None:
    """Remove exactly `indent` leading spaces from each non-blank line; None if a line has fewer
    (e.g. a multi-line string at column 0), because stripping it would change the code."""
    out = []
    for line in lines:
        if not line.strip():
            out.append("")
        elif line[:indent].strip(" "):
            return None
        else:
            out.append(line[indent:].rstrip())
    return out


def _function_sample(
    node: ast.FunctionDef | ast.AsyncFunctionDef, cls: str | None, module: str, lines: list[str], params: FilterParams
) -> FunctionSample | str:
    """The sample of one function, or the name of the filter that rejects it."""
    doc = ast.get_docstring(node, clean=True)
    if doc is None:
        return "no_docstring"
    if len(doc.strip()) < params.min_docstring_chars:
        return "short_docstring"
    body = node.body[1:]
    if not body or all(_is_stub(s) for s in body):
        return "stub"
    doc_node = node.body[0]
    if (
        doc_node.lineno <= node.lineno
        or not all(_starts_line(s, lines) for s in node.body)
        or body[0].lineno <= (doc_node.end_lineno or doc_node.lineno)
    ):
        return "irregular_layout"  # one-liners, `"""doc"""; x = 1`, ...
    header = lines[node.lineno - 1 : doc_node.lineno - 1]
    docstring = lines[doc_node.lineno - 1 : doc_node.end_lineno]
    code = lines[doc_node.end_lineno : node.end_lineno]
    while code and not code[0].strip():  # the blank line that often follows a docstring
        code = code[1:]
    stub_lines = _dedent(header + docstring, node.col_offset)
    code_lines = _dedent(header + code, node.col_offset)
    if stub_lines is None or code_lines is None:
        return "irregular_layout"
    statements = sum(isinstance(n, ast.stmt) for s in body for n in ast.walk(s))
    body_lines = sum(1 for ln in code if ln.strip() and not ln.strip().startswith("#"))
    if statements < params.min_statements or body_lines < params.min_body_lines:
        return "trivial"
    if len(code_lines) > params.max_lines:
        return "too_many_lines"
    stub, code_text = "\n".join(stub_lines), "\n".join(code_lines).strip("\n")
    if "```" in stub or "```" in code_text:
        return "contains_fence"
    prompt = METHOD_PROMPT.format(cls=cls, stub=stub) if cls else FUNCTION_PROMPT.format(stub=stub)
    response = RESPONSE.format(code=code_text)
    if len(prompt) + len(response) > params.max_chars:
        return "too_long"
    qualname = f"{cls}.{node.name}" if cls else node.name
    return FunctionSample(module, qualname, prompt, response)


def _walk_defs(
    body: list[ast.stmt], cls: str | None
) -> Iterator[tuple[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef, str | None]]:
    """Functions of a module body and methods of (nested) classes, in source order."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node, cls
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                yield from _walk_defs(node.body, f"{cls}.{node.name}" if cls else node.name)


def extract_functions(
    source: str, module: str, params: FilterParams = FilterParams()
) -> tuple[list[FunctionSample], Counter[str]]:
    """Samples of the public functions and methods in one module's source, in source order, and
    a count of the rejected ones by filter reason. A file that does not parse counts as 'syntax_error'."""
    reasons: Counter[str] = Counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences etc. in third-party code
            tree = ast.parse(source)
    except (SyntaxError, ValueError):
        reasons["syntax_error_file"] += 1
        return [], reasons
    lines = source.splitlines()
    samples = []
    for node, cls in _walk_defs(tree.body, None):
        if isinstance(node, ast.ClassDef):
            if node.name.startswith("_"):
                reasons["private_class"] += 1
            continue
        if node.name.startswith("_"):
            reasons["private_name"] += 1
            continue
        result = _function_sample(node, cls, module, lines, params)
        if isinstance(result, str):
            reasons[result] += 1
        else:
            samples.append(result)
    return samples, reasons


def _extract_file(task: tuple[str, str, FilterParams]) -> tuple[list[FunctionSample], Counter[str]]:
    """Worker: read and extract one file (module-level so a process pool can pickle it)."""
    path, module, params = task
    try:
        source = Path(path).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return [], Counter({"unreadable_file": 1})
    return extract_functions(source, module, params)


# --------------------------------------------------------------------------------------------
# Distributions, cache key
# --------------------------------------------------------------------------------------------


def _installed(search_path: Sequence[str | os.PathLike[str]] | None) -> dict[str, metadata.Distribution]:
    """Canonical name -> distribution; the first one on the path wins, as for imports."""
    if search_path is None:
        dists = metadata.distributions()
    else:
        dists = metadata.distributions(path=[str(p) for p in search_path])
    found: dict[str, metadata.Distribution] = {}
    for dist in dists:
        name = dist.metadata["Name"] if dist.metadata else None
        if name:
            found.setdefault(_canonical(name), dist)
    return found


def _rank(seed: int, *parts: str) -> bytes:
    """Stable pseudo-random sort key (blake2b) for deterministic seeded sub-sampling."""
    return hashlib.blake2b("\x00".join((str(seed), *parts)).encode(), digest_size=16).digest()


def _subsample(items: list[Any], limit: int | None, seed: int, key: Any) -> list[Any]:
    """At most `limit` items chosen by seeded hash rank, kept in their original order."""
    if limit is None or len(items) <= limit:
        return items
    keep = set(sorted(range(len(items)), key=lambda i: _rank(seed, *key(items[i])))[:limit])
    return [x for i, x in enumerate(items) if i in keep]


_KEY_PARAMS = (
    "distributions",
    "min_samples",
    "max_samples_per_client",
    "max_files_per_distribution",
    "selection_seed",
    *FilterParams.__dataclass_fields__,
)


def cache_key(params: Mapping[str, Any], versions: Mapping[str, str | None]) -> str:
    """16 hex digits of sha256 over what determines the content: builder version, Python minor
    version (ast output may change), the content-relevant parameters and every requested
    distribution's installed version (None when missing, so installing it changes the key)."""
    blob = {
        "builder": BUILDER_VERSION,
        "python": "{}.{}".format(*sys.version_info[:2]),
        "params": {k: params[k] for k in _KEY_PARAMS},
        "versions": dict(sorted(versions.items())),
    }
    return build_key(blob)


@dataclass
class _Plan:
    """Resolved build request: parameters, distributions found and missing, cache key."""

    params: dict[str, Any]
    dists: dict[str, metadata.Distribution]
    missing: list[str]
    key: str


def _plan(kwargs: Mapping[str, Any]) -> _Plan:
    params = FedPyCode().resolve_kwargs(kwargs)
    explicit = params["distributions"] is not None
    names = sorted({_canonical(n) for n in (params["distributions"] or DEFAULT_DISTRIBUTIONS)})
    params["distributions"] = names
    installed = _installed(params["search_path"])
    missing = [n for n in names if n not in installed]
    if explicit and missing:
        raise DataError(f"fed-pycode: requested distribution(s) not installed: {missing}")
    dists = {n: installed[n] for n in names if n in installed}
    versions: dict[str, str | None] = {n: (dists[n].version if n in dists else None) for n in names}
    return _Plan(params, dists, missing, cache_key(params, versions))


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------


def _dist_tasks(
    name: str, dist: metadata.Distribution, params: Mapping[str, Any], fparams: FilterParams, stats: dict[str, Any]
) -> list[tuple[str, str, FilterParams]]:
    """The (path, module, filters) tasks of one distribution: public .py files, sorted, capped."""
    files = sorted(str(f) for f in (dist.files or []) if str(f).endswith(".py"))
    public = [f for f in files if is_public_module(f)]
    chosen = _subsample(public, params["max_files_per_distribution"], params["selection_seed"], lambda f: (name, f))
    stats.update(files_py=len(files), files_public=len(public), files_parsed=len(chosen))
    stats["dropped"]["private_or_test_module_file"] = len(files) - len(public)
    stats["dropped"]["file_cap"] = len(public) - len(chosen)
    return [(str(dist.locate_file(f)), ".".join(_module_parts(f) or []), fparams) for f in chosen]


def _extract_all(
    plan: _Plan, fparams: FilterParams, workers: int, progress: bool
) -> tuple[dict[str, list[FunctionSample]], dict[str, dict[str, Any]]]:
    """Candidates per distribution (sorted names, sorted files, source order) and per-dist stats."""
    stats: dict[str, dict[str, Any]] = {}
    tasks: list[tuple[str, str, FilterParams]] = []
    owner: list[str] = []
    for name, dist in plan.dists.items():
        stats[name] = {"version": dist.version, "dropped": Counter()}
        dist_tasks = _dist_tasks(name, dist, plan.params, fparams, stats[name])
        tasks += dist_tasks
        owner += [name] * len(dist_tasks)
    candidates: dict[str, list[FunctionSample]] = {n: [] for n in plan.dists}
    results: Iterable[tuple[list[FunctionSample], Counter[str]]]
    pool = ProcessPoolExecutor(workers) if workers > 1 and len(tasks) > 1 else None
    try:
        results = pool.map(_extract_file, tasks, chunksize=8) if pool else map(_extract_file, tasks)
        remaining = Counter(owner)
        for name, (samples, reasons) in zip(owner, results):
            candidates[name] += samples
            stats[name]["dropped"].update(reasons)
            remaining[name] -= 1
            if not remaining[name]:
                say(progress, f"  {name} {stats[name]['version']}: {stats[name]['files_parsed']} files, "
                     f"{len(candidates[name])} candidate functions")
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    for name in plan.dists:
        stats[name]["candidates"] = len(candidates[name])
    return candidates, stats


def _select(
    candidates: dict[str, list[FunctionSample]], stats: dict[str, dict[str, Any]], params: Mapping[str, Any]
) -> dict[str, list[FunctionSample]]:
    """Deduplicate across clients (first wins), cap per client, drop clients below min_samples."""
    seen: set[str] = set()
    kept: dict[str, list[FunctionSample]] = {}
    for name, samples in candidates.items():
        unique = []
        for s in samples:
            norm = " ".join(s.response.split())
            if norm in seen:
                stats[name]["dropped"]["duplicate"] += 1
            else:
                seen.add(norm)
                unique.append(s)
        capped = _subsample(unique, params["max_samples_per_client"], params["selection_seed"],
                            lambda s, n=name: (n, s.module, s.qualname, s.response))
        stats[name]["dropped"]["over_client_cap"] = len(unique) - len(capped)
        if len(capped) < params["min_samples"]:
            stats[name]["dropped"]["client_below_min_samples"] = len(capped)
            stats[name]["status"] = f"dropped: {len(capped)} < min_samples={params['min_samples']}"
            stats[name]["samples"] = 0
        else:
            stats[name]["status"] = "kept"
            stats[name]["samples"] = len(capped)
            kept[name] = capped
    return kept


def _manifest(
    plan: _Plan, stats: dict[str, dict[str, Any]], kept: dict[str, list[FunctionSample]], data: Path
) -> dict[str, Any]:
    """What was built from what: versions, counts, drop reasons, parameters, content hash."""
    totals: Counter[str] = Counter()
    dists: dict[str, Any] = {}
    for name, st in stats.items():
        dropped = {k: v for k, v in sorted(st["dropped"].items()) if v}
        totals.update(dropped)
        dists[name] = {**{k: v for k, v in st.items() if k != "dropped"}, "dropped": dropped}
    for name in plan.missing:
        dists[name] = {"version": None, "status": "skipped: not installed", "samples": 0}
    params = {k: v for k, v in plan.params.items() if k in _KEY_PARAMS}
    return {
        "dataset": "fed-pycode",
        "builder_version": BUILDER_VERSION,
        "cache_key": plan.key,
        "python": platform.python_version(),
        "params": params,
        "data_file": data.name,
        "content_sha256": file_sha256(data),
        "num_clients": len(kept),
        "num_samples": sum(map(len, kept.values())),
        "clients": {n: len(s) for n, s in kept.items()},
        "distributions": dict(sorted(dists.items())),
        "dropped": dict(sorted(totals.items())),
    }


def build_fed_pycode(cache_dir: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Build Fed-PyCode under `cache_dir/<key>/` (or reuse a complete build) and return the data file.
    (`cache_dir` is the source's own directory here, e.g. ~/.cache/fedllm/datasets/fed-pycode.)

    The build goes to a temporary sibling directory that is renamed into place only once the data
    file and manifest (written last) are complete, so a crash never leaves a build that looks done.
    Keyword arguments: see `FedPyCode.default_kwargs`.
    """
    plan = _plan(kwargs)
    params = plan.params
    progress = bool(params["progress"])
    cache_dir = Path(cache_dir)
    final = cache_dir / plan.key
    if read_build_manifest(final, plan.key) is not None:
        say(progress, f"fed-pycode: using cached build {final}")
        return final / DATA_FILE
    start = time.perf_counter()
    for name in plan.missing:
        say(progress, f"fed-pycode: skipping {name}: not installed")
    say(progress, f"fed-pycode: extracting functions from {len(plan.dists)} distributions -> {final}")
    fparams = FilterParams(**{k: params[k] for k in FilterParams.__dataclass_fields__})
    candidates, stats = _extract_all(plan, fparams, int(params["workers"]), progress)
    kept = _select(candidates, stats, params)
    clients = {
        name: [InstructionSample.single_turn(s.instruction, s.response) for s in samples] for name, samples in kept.items()
    }
    if not clients:
        raise DataError(f"fed-pycode: no distribution has min_samples={params['min_samples']} samples; "
                        f"counts: { {n: st['samples'] for n, st in stats.items()} }")
    with staging(cache_dir, plan.key) as tmp:
        data = write_fedllm_bench(clients, tmp / DATA_FILE)
        manifest = _manifest(plan, stats, kept, data)
        atomic_write(tmp / MANIFEST_FILE, lambda f: f.write(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"))
    say(progress, format_summary(manifest, seconds=time.perf_counter() - start))
    return final / DATA_FILE


def format_summary(manifest: Mapping[str, Any], seconds: float | None = None) -> str:
    """A human-readable report of a build: totals, per-client counts, skipped clients, drops."""
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    lines = [f"fed-pycode: {manifest['num_clients']} clients, {manifest['num_samples']} samples{took}"]
    for name, info in manifest["distributions"].items():
        lines.append(f"  {name:<18} {str(info.get('version')):<14} {info['samples']:>5}  {info['status']}")
    drops = ", ".join(f"{k}={v}" for k, v in manifest["dropped"].items())
    lines.append(f"  dropped: {drops}")
    return "\n".join(lines)


@register_source("fed-pycode")
class FedPyCode(DatasetSource):
    """Fed-PyCode: public functions of installed Python distributions, one client per distribution."""

    description = (
        "Offline code instructions: implement a public function of an installed Python package from its "
        "signature and docstring; one client per distribution (natural quantity, domain and style skew)."
    )
    default_kwargs = MappingProxyType(
        {
            "distributions": None,  # None: DEFAULT_DISTRIBUTIONS (missing ones skipped)
            "min_samples": 40,
            "max_samples_per_client": 400,
            "max_files_per_distribution": 300,
            "selection_seed": 0,
            **asdict(FilterParams()),
            "workers": 1,  # serial is ~17 s; >1 forks a process pool (unsafe after threads started)
            "search_path": None,  # importlib.metadata search path; None: sys.path
            "progress": True,
        }
    )

    def client_attributes(self, manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """A client is a distribution: its ``package`` name and its ``domain`` (:data:`DOMAINS`)."""
        return {name: {"package": name, "domain": DOMAINS.get(name.lower(), "other")} for name in manifest["clients"]}

    def build(self, cache_dir: Path, **kwargs: Any) -> Path:
        """Build or reuse the dataset under <cache_dir>/datasets/fed-pycode/; returns the data file."""
        return build_fed_pycode(self.dataset_dir(cache_dir), **self.resolve_kwargs(kwargs))

    def is_built(self, cache_dir: Path, **kwargs: Any) -> bool:
        """Whether a complete build for these arguments and the installed versions is cached."""
        plan = _plan(self.resolve_kwargs(kwargs))
        return read_build_manifest(self.dataset_dir(cache_dir) / plan.key, plan.key) is not None
