"""Shepherd's Dolly federations, built from a small local file in Dolly's exact schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedllm.data.fedllm_bench import read_fedllm_bench
from fedllm.data.schema import DataError
from fedllm.data.sources import SOURCES, get_source, load_dataset
from fedllm.data.sources.shepherd_dolly import load_dolly_rows

CATEGORIES = [
    "brainstorming", "classification", "closed_qa", "creative_writing",
    "general_qa", "information_extraction", "open_qa", "summarization",
]  # fmt: skip
PNG = b"\x89PNG\r\n\x1a\n"


def dolly_rows() -> list[dict[str, str]]:
    """8 categories x 28..42 rows, Dolly's fields and field order; every instruction unique."""
    rows = []
    for c, cat in enumerate(CATEGORIES):
        for i in range(28 + 2 * c):
            rows.append({
                "instruction": f"[{cat}] question {i}?",
                "context": f"Some context about {cat} {i}." if i % 3 == 0 else "",
                "response": f"Answer {i} for {cat}.",
                "category": cat,
            })
    return rows


def category_of(instruction: str) -> str:
    return instruction[1:instruction.index("]")]


@pytest.fixture(scope="module")
def dolly_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dolly") / "databricks-dolly-15k.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in dolly_rows()))
    return path


@pytest.fixture(scope="module")
def shards_build(dolly_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    return get_source("shepherd-dolly-shards").build(cache, data_files=str(dolly_file), num_clients=8, progress=False)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _manifest(data_file: Path) -> dict:
    return json.loads((data_file.parent / "manifest.json").read_text())


def test_registered() -> None:
    assert {"shepherd-dolly-shards", "shepherd-dolly-dirichlet"} <= set(SOURCES)
    assert get_source("shepherd-dolly-shards").default_kwargs["num_clients"] == 100
    dirichlet = get_source("shepherd-dolly-dirichlet").default_kwargs
    assert (dirichlet["alpha"], dirichlet["min_size"], dirichlet["test_per_category"]) == (0.5, 40, 10)


def test_global_test_holds_ten_per_category_apart_from_training(shards_build: Path) -> None:
    test_file = shards_build.parent / "global_test.json"
    records = json.loads(test_file.read_text())
    assert isinstance(records, list) and len(records) == 10 * len(CATEGORIES)
    per_cat = {c: sum(r["category"] == c for r in records) for c in CATEGORIES}
    assert per_cat == {c: 10 for c in CATEGORIES}
    assert all(category_of(r["instruction"]) == r["category"] for r in records)
    (client, test_samples), = read_fedllm_bench(test_file).items()  # loads as one client
    assert client == "global_test" and len(test_samples) == 80
    train = {s.instruction for samples in read_fedllm_bench(shards_build).values() for s in samples}
    assert not train & {s.instruction for s in test_samples}
    assert len(train) + len(test_samples) == len(dolly_rows())  # nothing lost
    with_context = next(s for s in test_samples if "\n\n" in s.instruction)
    assert with_context.instruction.split("\n\n")[1].startswith("Some context about")


def test_shards_clients_see_at_most_two_categories(shards_build: Path) -> None:
    clients = read_fedllm_bench(shards_build)
    assert list(clients) == [f"client_{i}" for i in range(8)]
    for samples in clients.values():
        assert 1 <= len({category_of(s.instruction) for s in samples}) <= 2
    m = _manifest(shards_build)
    assert m["partition"]["summary"]["max_labels_per_client"] <= 2
    assert m["clients"] == {c: len(s) for c, s in clients.items()}
    assert {c: sum(r["labels"].values()) for c, r in m["partition"]["clients"].items()} == m["clients"]


def test_manifest_and_plot(shards_build: Path) -> None:
    m = _manifest(shards_build)
    assert m["dataset"] == "shepherd-dolly-shards" and m["data_file"] == shards_build.name
    assert m["num_rows"] == len(dolly_rows()) and m["num_samples"] == len(dolly_rows()) - 80
    assert m["num_clients"] == 8 and m["params"]["seed"] == 42 and m["params"]["shards_per_client"] == 2
    assert m["global_test"]["file"] == "global_test.json" and m["global_test"]["num_samples"] == 80
    assert m["global_test"]["per_category"] == {c: 10 for c in CATEGORIES}
    assert m["partition"]["splitter"] == "shards"
    assert m["partition"]["params"] == {"num_clients": 8, "shards_per_client": 2, "cut_at_labels": True}
    for key in ("mean_tv", "size_cv", "size_gini", "max_labels_per_client"):
        assert key in m["partition"]["summary"]
    assert m["categories"] == {c: 28 + 2 * i for i, c in enumerate(CATEGORIES)}
    assert (shards_build.parent / m["plot_file"]).read_bytes()[:8] == PNG
    assert sorted(p.name for p in shards_build.parent.parent.iterdir()) == [shards_build.parent.name]  # no temp dirs


def test_deterministic_cached_and_seed_dependent(
    dolly_file: Path, shards_build: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = get_source("shepherd-dolly-shards")
    kwargs = {"data_files": str(dolly_file), "num_clients": 8}
    again = source.build(tmp_path, **kwargs)  # a fresh cache, same arguments
    assert again.read_bytes() == shards_build.read_bytes()
    assert (again.parent / "global_test.json").read_bytes() == (shards_build.parent / "global_test.json").read_bytes()
    assert f"8 clients, {len(dolly_rows()) - 80} training samples, global test 80" in capsys.readouterr().err
    assert source.is_built(tmp_path, **kwargs)
    assert source.build(tmp_path, **kwargs) == again
    assert "using cached build" in capsys.readouterr().err
    (again.parent / "global_test.json").write_text("[]")  # a damaged build is rebuilt
    assert not source.is_built(tmp_path, **kwargs)
    assert source.build(tmp_path, **kwargs, progress=False) == again and source.is_built(tmp_path, **kwargs)
    assert not source.is_built(tmp_path, **kwargs, seed=7)
    other = source.build(tmp_path, **kwargs, seed=7, progress=False)
    assert other.parent != again.parent and other.read_bytes() != again.read_bytes()


def test_dirichlet_unequal_sizes_with_min_size(dolly_file: Path, tmp_path: Path) -> None:
    fed = load_dataset(
        "shepherd-dolly-dirichlet", cache_dir=tmp_path, data_files=[dolly_file], num_clients=4, min_size=20,
        progress=False, test_fraction=0.0,
    )
    assert fed.meta["source_name"] == "shepherd-dolly-dirichlet" and len(fed) == 4
    sizes = [fed[c].num_train for c in fed]
    assert min(sizes) >= 20 and sum(sizes) == len(dolly_rows()) - 80 and len(set(sizes)) > 1
    path = get_source("shepherd-dolly-dirichlet").build(tmp_path, data_files=[dolly_file], num_clients=4, min_size=20)
    m = _manifest(path)
    assert m["partition"]["splitter"] == "dirichlet"
    assert m["partition"]["params"] == {
        "num_clients": 4, "alpha": 0.5, "min_size": 20, "max_retries": 1000, "balance": True,
    }  # fmt: skip
    assert m["partition"]["summary"]["mean_tv"] > 0.1 and m["global_test"]["num_samples"] == 80


def test_other_file_formats(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "dolly.parquet"
    pq.write_table(pa.Table.from_pylist(dolly_rows()), parquet)
    listed = tmp_path / "dolly.json"
    listed.write_text(json.dumps(dolly_rows()))
    assert load_dolly_rows(parquet) == load_dolly_rows(listed) == dolly_rows()
    assert load_dolly_rows([listed, parquet]) == dolly_rows() * 2  # several files: rows in order
    # CSV, as --data-files promises and fed-dolly accepts for the same file (Shepherd builds once refused it)
    from tests.test_sources_public import write_csv

    csv_file = write_csv(tmp_path / "dolly.csv", dolly_rows())
    assert load_dolly_rows(csv_file) == dolly_rows()
    with pytest.raises(DataError, match="category"):
        load_dolly_rows(write_csv(tmp_path / "bad.csv", [{"instruction": "q", "response": "a"}]))


def test_data_list_states_how_shards_differ_from_shepherds_script() -> None:
    from typer.testing import CliRunner

    from fedllm.cli import app

    out = CliRunner().invoke(app, ["data", "list"], env={"COLUMNS": "400"}).output
    assert "at most 2 categories" in out and "up to 3" in out and "cut_at_labels=false" in out


def test_bad_arguments_and_data(dolly_file: Path, tmp_path: Path) -> None:
    source = get_source("shepherd-dolly-dirichlet")
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        source.build(tmp_path, data_files=str(dolly_file), alpha=0)
    with pytest.raises(ValueError, match="min_size must be >= 1"):
        source.build(tmp_path, data_files=str(dolly_file), min_size=0)
    with pytest.raises(ValueError, match="test_per_category must be an integer >= 0"):
        source.build(tmp_path, data_files=str(dolly_file), test_per_category=-1)
    with pytest.raises(TypeError, match="no build option"):
        source.build(tmp_path, data_files=str(dolly_file), shards_per_client=2)
    with pytest.raises(ValueError, match=r"min_size=40 .*max_retries=1000|needs at least 4000 items"):
        source.build(tmp_path, data_files=str(dolly_file), progress=False)  # 100 clients x 40 > 200 rows
    with pytest.raises(DataError, match="no such data file"):
        source.build(tmp_path, data_files=str(tmp_path / "missing.jsonl"))
    tsv = tmp_path / "dolly.tsv"
    tsv.write_text("instruction,context,response,category\n")
    with pytest.raises(DataError, match="unsupported data file type"):
        source.build(tmp_path, data_files=tsv)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"instruction": "q", "response": "a"}) + "\n" for _ in range(3)))
    with pytest.raises(DataError, match=r"bad.jsonl: row 0 is not in Dolly's schema: missing field\(s\) \['context', 'category'\]"):
        source.build(tmp_path, data_files=str(bad), progress=False)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(dolly_file.read_text() + '{"instruction": \n')
    with pytest.raises(DataError, match=r"broken.jsonl: invalid JSON at line 281, column"):
        source.build(tmp_path, data_files=str(broken), progress=False)
    with pytest.raises(DataError, match=r"a .json data file must hold a list of rows, got dict"):
        source.build(tmp_path, data_files=_write(tmp_path / "obj.json", "{}"), progress=False)
    few = tmp_path / "few.jsonl"
    keep = [r for r in dolly_rows() if r["category"] != "open_qa" or r["instruction"].endswith(" 1?")]
    few.write_text("".join(json.dumps(r) + "\n" for r in keep))
    with pytest.raises(DataError, match="category 'open_qa' has 1 rows: too few"):
        get_source("shepherd-dolly-shards").build(tmp_path, data_files=str(few), num_clients=8, progress=False)
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "datasets").rglob("*"))  # failed builds cleaned up


def test_rows_with_empty_fields_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = dolly_rows() + [
        {"instruction": "", "context": "", "response": "x", "category": "open_qa"},
        {"instruction": "q", "context": "", "response": "  ", "category": "open_qa"},
        {"instruction": "q", "context": "", "response": "r", "category": ""},
    ]
    path = tmp_path / "dolly.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    built = get_source("shepherd-dolly-shards").build(tmp_path, data_files=path, num_clients=8, progress=False)
    m = _manifest(built)
    assert m["dropped"] == {"empty_instruction_or_response": 2, "missing_category": 1}
    assert m["num_rows"] == len(rows) and m["num_samples"] == len(dolly_rows()) - 80
