"""Shared fixtures: tiny random models and small synthetic federations (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedllm.config import RunConfig, build_config
from fedllm.data.schema import ClientData, FederatedDataset, InstructionSample

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]


def synthetic_records(num_clients: int = 4, per_client: int = 12) -> dict[str, list[dict[str, str]]]:
    """Each client has its own task style, so clients differ like real users do."""
    out: dict[str, list[dict[str, str]]] = {}
    for c in range(num_clients):
        recs = []
        for i in range(per_client + c * 3):  # quantity skew
            w = WORDS[(i + c) % len(WORDS)]
            if c % 2 == 0:
                recs.append({"instruction": f"Repeat {w} three times.", "response": f"{w} {w} {w}"})
            else:
                recs.append({"instruction": f"Spell {w}.", "response": " ".join(w)})
        out[f"user{c}"] = recs
    return out


def synthetic_federation(num_clients: int = 4, per_client: int = 12, test_per_client: int = 2) -> FederatedDataset:
    clients = []
    for cid, recs in synthetic_records(num_clients, per_client).items():
        samples = [InstructionSample.single_turn(r["instruction"], r["response"]) for r in recs]
        clients.append(ClientData(cid, train=samples[test_per_client:], test=samples[:test_per_client]))
    return FederatedDataset.from_clients("synthetic", clients)


def make_dist(site: Path, name: str, version: str, files: dict[str, str]) -> None:
    """A fake installed distribution: package files plus <name>-<version>.dist-info (METADATA, RECORD)."""
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text, encoding="utf-8")
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    record = [f"{rel},," for rel in files] + [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
    (info / "RECORD").write_text("\n".join(record) + "\n", encoding="utf-8")


def tiny_config(tmp_path: Path, **sections) -> RunConfig:
    data = {
        "name": "t", "output_dir": str(tmp_path / "runs"), "seed": 0,
        "model": {"name": "tiny"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "data": {"dataset": "unused", "max_length": 64},
        "fl": {"algorithm": "fedavg", "rounds": 3, "clients_per_round": 2},
        "train": {"local_steps": 3, "batch_size": 2, "lr": 5e-3},
        "eval": {"every": 1, "at_start": True},
        "checkpoint": {"every": 1, "keep": 10},
    }
    for sec, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(sec, {}).update(values)
        else:
            data[sec] = values
    return build_config(data)


@pytest.fixture
def federation() -> FederatedDataset:
    return synthetic_federation()


@pytest.fixture
def bench_file(tmp_path: Path) -> Path:
    path = tmp_path / "fed.json"
    path.write_text(json.dumps(synthetic_records()))
    return path


def run_sim(cfg: RunConfig, resume: bool = False, dataset: FederatedDataset | None = None, **kw):
    """A quiet simulation of ``cfg`` on the synthetic federation with the held-out evaluator: (sim, summary)."""
    from fedllm.engine.progress import Reporter
    from fedllm.engine.simulation import Simulation
    from fedllm.eval.heldout import HeldoutEvaluator

    sim = Simulation(cfg, dataset=dataset or synthetic_federation(), reporter=Reporter(quiet=True),
                     evaluator=HeldoutEvaluator.from_config(cfg.eval), **kw)
    return sim, sim.run(resume=resume)


class Killed(Exception):
    """Raised where a test makes a run die, as a kill would."""


def kill_in_round(monkeypatch: pytest.MonkeyPatch, cfg: RunConfig, round_no: int, **kw) -> None:
    """Run ``cfg`` and die as round ``round_no`` (1-based) sends its first instruction."""
    from fedllm.engine.transport import InProcessTransport

    original = InProcessTransport.run

    def dying(self, instructions):
        for ins in instructions:
            if ins.round + 1 == round_no:
                raise Killed()
            yield from original(self, [ins])

    with monkeypatch.context() as m:
        m.setattr(InProcessTransport, "run", dying)
        with pytest.raises(Killed):
            run_sim(cfg, **kw)


AYA_FIXTURE_CLIENTS = {  # annotator -> (language, samples): FedLLM-Bench's families, and Telugu outside them
    "u_en": ("English", 8), "u_de": ("German", 7), "u_fr": ("French", 8), "u_es": ("Spanish", 6),
    "u_ru": ("Russian", 7), "u_te": ("Telugu", 8), "u_zh": ("Simplified Chinese", 6), "u_en2": ("English", 6),
}

AYA_FIXTURE_LANGUAGES = sorted({lang for lang, _ in AYA_FIXTURE_CLIENTS.values()})


def write_aya_fixture(path: Path) -> Path:
    """Rows in CohereForAI/aya_dataset's format (inputs, targets, language, language_code, annotation_type,
    user_id) for :data:`AYA_FIXTURE_CLIENTS`; one annotator also wrote two rows in another language."""
    rows = []
    for user, (lang, n) in AYA_FIXTURE_CLIENTS.items():
        for i in range(n):
            rows.append({"inputs": f"{lang} question {i} from {user}: say {WORDS[i % len(WORDS)]}",
                         "targets": f"{WORDS[(i + len(lang)) % len(WORDS)]} {lang.lower()} {i}", "language": lang,
                         "language_code": lang[:3].lower(), "annotation_type": "original-annotations", "user_id": user})
    rows += [{"inputs": f"extra {i}", "targets": f"extra answer {i}", "language": "French", "language_code": "fre",
              "annotation_type": "original-annotations", "user_id": "u_en"} for i in range(2)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def chromium_executable() -> str | None:
    """Debian's Chromium (``make install`` installs it where it can), for the browser tests."""
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium driven by Playwright (the system's Chromium: nothing is downloaded)."""
    path = chromium_executable()
    if path is None:
        pytest.skip("no chromium on PATH: `make install` installs Debian's chromium when run as root with apt")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def open_page(browser, url: str, screenshot=None):
    """Load ``url`` in a fresh page; returns (page, problems): console errors and page errors as text."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    page.goto(url, wait_until="load")
    if screenshot is not None:
        page.screenshot(path=str(screenshot), full_page=True)
    return page, problems


class OracleDrafts:
    """Stands in for ``eval.drafts.PromptLookup`` in decoding tests: records each row's tokens and drafts
    the answer ``answers`` holds for its prompt (if any): every third draft wrong at its second token, and
    one token past the answer's end, so drafts are kept whole, kept in part and run into the answer's end."""

    answers: dict[tuple[int, ...], list[int]] = {}
    seen: dict[tuple[int, ...], list[int]] = {}
    drafted: list[int] = []  # the length of every draft handed out

    def __init__(self, tokens=()) -> None:
        self.prompt, self.out, self.calls = tuple(tokens), [], 0
        type(self).seen[self.prompt] = self.out

    def extend(self, tokens) -> None:
        self.out.extend(tokens)

    def draft(self, k: int) -> list[int]:
        self.calls += 1
        known = self.answers.get(self.prompt)
        if known is None:
            return []
        want = (known + [0])[len(self.out):len(self.out) + k]
        if self.calls % 3 == 0 and len(want) > 1:
            want[1] = want[1] - 1 if want[1] else 1
        type(self).drafted.append(len(want))
        return want


def oracle_drafts(monkeypatch: pytest.MonkeyPatch, answers: dict[tuple[int, ...], list[int]]) -> type[OracleDrafts]:
    """Decoding with ``OracleDrafts`` holding ``answers`` (empty: no drafts, each row's tokens recorded)."""
    cls = type("Oracle", (OracleDrafts,), {"answers": answers, "seen": {}, "drafted": []})
    monkeypatch.setattr("fedllm.eval.generation.PromptLookup", cls)
    return cls
