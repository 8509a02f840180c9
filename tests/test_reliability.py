"""Reliability defects found when fedllm was tried as a new user would, each reproduced and checked:
locking, run names, I/O errors, damaged or drifted checkpoints, debris, deterministic files,
impossible participation, truncated samples, poisoned clients and strict JSON outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fedllm.cli import app
from fedllm.config import ConfigError, build_config
from fedllm.data.schema import ClientData, FederatedDataset, InstructionSample
from fedllm.engine.metrics import read_metrics
from fedllm.engine.progress import Reporter
from fedllm.engine.simulation import RunError, Simulation
from fedllm.engine.transport import InProcessTransport
from fedllm.eval.heldout import HeldoutEvaluator
from fedllm.models.adapters import load_adapter_state
from tests.conftest import kill_in_round, synthetic_federation, tiny_config
from tests.conftest import run_sim as run

runner = CliRunner()


def strict_json(text: str):
    def bad(c):
        raise ValueError(f"bare {c} in JSON")

    return json.loads(text, parse_constant=bad)


def cli_args(tmp_path: Path, bench_file: Path, *extra: str) -> list[str]:
    return ["train", "-q", f"output_dir={tmp_path / 'runs'}", "model.name=tiny", f"data.dataset={bench_file}",
            "data.max_length=64", "lora.r=4", "fl.rounds=2", "train.local_steps=2", "train.batch_size=2", *extra]


def one_line_error(output: str) -> str:
    assert "Traceback" not in output, output
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    text = " ".join(" ".join(lines).split())
    assert text.startswith("error:"), output
    return text


# ------------------------------------------------------------------ the run directory


def test_a_second_process_cannot_train_into_a_locked_run(tmp_path, bench_file):
    run_dir = tmp_path / "runs" / "run"
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom fedllm.engine.rundir import RunLock\n"
                               f"RunLock({str(run_dir)!r}).acquire(); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = runner.invoke(app, cli_args(tmp_path, bench_file))
        assert res.exit_code == 2
        msg = one_line_error(res.output)
        assert f"is in use by another fedllm process (pid {holder.pid})" in msg
        assert not (run_dir / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    res = runner.invoke(app, cli_args(tmp_path, bench_file))  # the kernel released the lock with the process
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("name", ["../x", "/abs/path", "", ".hidden", "a/b", "-flag", "x@round-2"])
def test_run_names_cannot_leave_output_dir(tmp_path, name):
    with pytest.raises(ConfigError, match="name: .*one directory name"):
        build_config({"name": name, "output_dir": str(tmp_path)})


def test_output_dir_that_is_a_file_is_one_clear_line(tmp_path, bench_file):
    (tmp_path / "runs").write_text("not a directory")
    res = runner.invoke(app, cli_args(tmp_path, bench_file))
    assert res.exit_code == 2
    msg = one_line_error(res.output)
    assert "cannot write the run directory" in msg and "choose a writable output_dir" in msg


def test_missing_local_model_path_is_named(tmp_path, bench_file):
    res = runner.invoke(app, cli_args(tmp_path, bench_file, f"model.name={tmp_path / 'no-such-model'}"))
    assert res.exit_code == 2
    msg = one_line_error(res.output)
    assert "no-such-model" in msg and "no such directory" in msg and "Repo id" not in msg
    assert not (tmp_path / "runs" / "run").exists()  # a run that could not start leaves nothing behind


DRIVER = r'''
import json, os, subprocess, sys
tmp, bench = sys.argv[1], sys.argv[2]
mnt = os.path.join(tmp, "small")
os.makedirs(mnt, exist_ok=True)
def mount(opts):
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", mnt], check=True)
def train(*args):
    p = subprocess.run([sys.executable, "-m", "fedllm.cli", "train", "-q", *args], capture_output=True, text=True)
    return {"rc": p.returncode, "out": p.stdout + p.stderr}
common = ["model.name=tiny", f"data.dataset={bench}", "data.max_length=64", "lora.r=4", "fl.algorithm=scaffold",
          "fl.rounds=6", "train.local_steps=2", "train.batch_size=2", "eval.every=0", "checkpoint.keep=10"]
out = {}
ro = os.path.join(tmp, "ro")  # the read-only run, side by side with the full-disk one
os.makedirs(ro, exist_ok=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", ro], check=True)
readonly = subprocess.Popen([sys.executable, "-m", "fedllm.cli", "train", "-q", f"output_dir={ro}", "name=x", *common],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
mount("size=%s" % sys.argv[3])
out["full"] = train(f"output_dir={mnt}", "name=r", *common)
out["left"] = sorted(os.listdir(os.path.join(mnt, "r", "checkpoints"))) if os.path.isdir(os.path.join(mnt, "r", "checkpoints")) else []
subprocess.run(["mount", "-o", "remount,size=64m", mnt], check=True)
out["resumed"] = train("--resume", os.path.join(mnt, "r"))
subprocess.run(["cp", "-r", os.path.join(mnt, "r"), os.path.join(tmp, "resumed")], check=True)
subprocess.run(["umount", mnt], check=True)
out["readonly"] = {"out": readonly.communicate()[0], "rc": readonly.returncode}
subprocess.run(["umount", ro], check=True)
print(json.dumps(out))
'''


def test_disk_full_and_read_only_output_are_clear_and_lose_nothing(tmp_path, bench_file):
    """A real full disk (a small tmpfs) mid-run: one clear line, older checkpoints intact, and after
    freeing space `--resume` ends with the adapter of a run never interrupted. A read-only one: one line."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("this kernel does not allow user and mount namespaces (unshare -rm), needed for a private tmpfs")
    ref = subprocess.run([sys.executable, "-m", "fedllm.cli", "train", "-q", f"output_dir={tmp_path}", "name=ref",
                          "model.name=tiny", f"data.dataset={bench_file}", "data.max_length=64", "lora.r=4",
                          "fl.algorithm=scaffold", "fl.rounds=6", "train.local_steps=2", "train.batch_size=2",
                          "eval.every=0", "checkpoint.keep=10"], capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    used = sum(f.stat().st_size for f in (tmp_path / "ref").rglob("*") if f.is_file())
    size = f"{(used // 2) // 4096 * 4096}"  # room for about half of the run
    proc = subprocess.run(["unshare", "-rm", sys.executable, "-c", DRIVER, str(tmp_path), str(bench_file), size],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["full"]["rc"] == 2, out["full"]["out"]
    msg = one_line_error(out["full"]["out"])
    assert "No space left on device" in msg and "resume" in msg
    assert out["left"] and not [n for n in out["left"] if n.endswith(".tmp")], out["left"]  # no partial checkpoint
    assert out["resumed"]["rc"] == 0, out["resumed"]["out"]
    ref_state = load_adapter_state(tmp_path / "ref" / "adapter")
    got = load_adapter_state(tmp_path / "resumed" / "adapter")
    assert all(torch.equal(got[k], ref_state[k]) for k in ref_state)
    assert out["readonly"]["rc"] == 2
    msg = one_line_error(out["readonly"]["out"])
    assert "Read-only file system" in msg and "choose a writable output_dir" in msg


# ------------------------------------------------------------------ checkpoints and resume


def test_damaged_newest_checkpoint_falls_back_to_an_older_one(tmp_path, monkeypatch):
    fl = {"algorithm": "fedadam", "rounds": 4}
    ref, _ = run(tiny_config(tmp_path / "ref", fl=fl))
    cfg = tiny_config(tmp_path / "k", fl=fl)
    kill_in_round(monkeypatch, cfg, 4)
    newest = cfg.run_dir / "checkpoints" / "round-3" / "adapter.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # torn by a crash of the disk, say
    warnings = []
    sim = Simulation(cfg, dataset=synthetic_federation(), reporter=Reporter(quiet=True),
                     evaluator=HeldoutEvaluator.from_config(cfg.eval))
    sim.reporter.warn = warnings.append
    sim.run(resume=True)
    assert any("checkpoint round-3 is damaged" in w and "adapter.safetensors" in w and "round-2" in w for w in warnings)
    assert (cfg.run_dir / "checkpoints" / "round-3.damaged").is_dir()  # kept aside; round 3 was redone
    assert all(torch.equal(sim.final_state[k], ref.final_state[k]) for k in ref.final_state)


def test_no_intact_checkpoint_is_one_clear_error(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, fl={"rounds": 3}, checkpoint={"every": 1, "keep": 2})
    kill_in_round(monkeypatch, cfg, 3)
    for ck in (cfg.run_dir / "checkpoints").iterdir():
        (ck / "state.json").write_text("{ torn")
    with pytest.raises(RunError, match=r"no intact checkpoint to resume from: .*state.json is damaged"):
        run(cfg, resume=True)


def test_edited_config_is_refused_unless_allowed(tmp_path, monkeypatch, bench_file):
    res = runner.invoke(app, cli_args(tmp_path, bench_file, "fl.algorithm=fedadam", "fl.rounds=3"))
    assert res.exit_code == 0, res.output
    run_dir = tmp_path / "runs" / "run"
    cfg_path = run_dir / "config.yaml"
    cfg_path.write_text(cfg_path.read_text().replace("algorithm: fedadam", "algorithm: fedavg"))
    res = runner.invoke(app, ["train", "-q", "--resume", str(run_dir)])
    assert res.exit_code == 2
    msg = one_line_error(res.output)
    assert "differs from the configuration round-3 was written with (fl.algorithm: 'fedadam' -> 'fedavg')" in msg
    assert "--allow-config-change" in msg
    res = runner.invoke(app, ["train", "-q", "--resume", str(run_dir), "--allow-config-change"])
    assert res.exit_code == 0 and "resuming under a changed configuration" in " ".join(res.output.split())


def test_checkpoint_from_before_fingerprints_resumes_with_a_warning(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, fl={"rounds": 3})
    kill_in_round(monkeypatch, cfg, 3)
    for ck in (cfg.run_dir / "checkpoints").iterdir():
        meta = json.loads((ck / "state.json").read_text())
        del meta["info"]["fingerprint"], meta["info"]["config"]  # as written by fedllm before this check existed
        (ck / "state.json").write_text(json.dumps(meta))
    warnings = []
    sim = Simulation(cfg, dataset=synthetic_federation(), reporter=Reporter(quiet=True))
    sim.reporter.warn = warnings.append
    sim.run(resume=True)
    assert any("predates config fingerprints" in w for w in warnings)


def test_a_key_added_by_a_newer_fedllm_is_not_a_config_change(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, fl={"rounds": 3})
    kill_in_round(monkeypatch, cfg, 3)
    for ck in (cfg.run_dir / "checkpoints").iterdir():
        meta = json.loads((ck / "state.json").read_text())
        del meta["info"]["config"]["fl"]["v0"], meta["info"]["config"]["train"]["optimizer"]  # written before they existed
        (ck / "state.json").write_text(json.dumps(meta))
    warnings = []
    sim = Simulation(cfg, dataset=synthetic_federation(), reporter=Reporter(quiet=True))
    sim.reporter.warn = warnings.append
    sim.run(resume=True)
    assert warnings == []


def test_debris_of_a_killed_save_is_removed_on_resume(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, fl={"rounds": 2})
    kill_in_round(monkeypatch, cfg, 2)
    d = cfg.run_dir
    (d / ".adapter-k2j4x").mkdir()  # what kill -9 during the final adapter save leaves
    (d / ".adapter-k2j4x" / "adapter_model.safetensors").write_bytes(b"partial")
    (d / ".summary.json.abc.tmp").write_text("{")
    (d / "checkpoints" / ".round-2.tmp").mkdir()
    run(cfg, resume=True)
    assert not list(d.glob(".adapter-*")) and not list(d.glob(".*.tmp"))
    assert not list((d / "checkpoints").glob(".*"))


def test_adapter_config_is_the_same_under_any_hash_seed(tmp_path):
    script = ("import sys\nfrom fedllm.config import build_config\nfrom fedllm.models.adapters import AdapterSlot, "
              "attach_adapter, save_adapter\nfrom fedllm.models.tiny import build_tiny_model\n"
              "slot = AdapterSlot(attach_adapter(build_tiny_model(), build_config({'lora': {'r': 4}})))\n"
              "save_adapter(slot, slot.initial_state(0), sys.argv[1])\n")
    seeds = ("1", "2", "3")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / seed)],
                              env={**os.environ, "PYTHONHASHSEED": seed}) for seed in seeds]  # side by side
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    texts = [(tmp_path / seed / "adapter_config.json").read_text() for seed in seeds]
    assert texts[0] == texts[1] == texts[2]
    assert json.loads(texts[0])["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "1").stat().st_mode & 0o777 == 0o777 & ~umask  # not private like a temp directory


# ------------------------------------------------------------------ participation and data


def test_more_clients_per_round_than_clients_is_an_error(tmp_path):
    cfg = tiny_config(tmp_path, fl={"clients_per_round": 5})
    with pytest.raises(RunError, match=r"fl.clients_per_round=5 exceeds the 4 clients .*<= 4"):
        run(cfg)
    assert not cfg.run_dir.exists()


def truncation_federation() -> FederatedDataset:
    """user0 normal; user1 half its samples with a prompt too long to leave any response token at
    max_length 64; user2 only such samples."""
    long = InstructionSample.single_turn("word " * 80, "the answer")
    base = synthetic_federation()
    c0, c1 = base["user0"], base["user1"]
    clients = [c0, ClientData("user1", train=c1.train[:6] + [long] * 6, test=c1.test),
               ClientData("user2", train=[long] * 5, test=base["user2"].test)]
    return FederatedDataset.from_clients("trunc", clients)


def test_samples_truncated_to_nothing_are_dropped_and_counted(tmp_path):
    cfg = tiny_config(tmp_path, fl={"rounds": 2, "clients_per_round": 2}, data={"max_length": 64})
    sim, summary = run(cfg, dataset=truncation_federation())
    events = read_metrics(cfg.run_dir / "metrics.jsonl")
    setup = events[0]
    assert setup["dropped_samples"] == {"user1": 6, "user2": 5}
    assert setup["drop_reasons"] == {"no loss token left after truncation": 11}
    assert set(setup["excluded"]) == {"user2"}
    assert "all 5 training samples are unusable at data.max_length=64 (no loss token left after truncation)" in \
        setup["excluded"]["user2"]
    assert summary["excluded_clients"] == setup["excluded"] and setup["participants"] == 2
    clients = [e for e in events if e["event"] == "client"]
    assert {c["client"] for c in clients} == {"user0", "user1"}  # user2 is never sampled
    for c in clients:
        assert c["loss"] > 0 and c["dropped_samples"] == (6 if c["client"] == "user1" else 0)
    # aggregation weights count trainable samples only: user1 holds 6 (not 12), user0 10
    rounds = [e for e in events if e["event"] == "round"]
    assert all(r["aggregated"] == r["clients"] for r in rounds)


def test_a_local_client_without_trainable_samples_is_refused(tmp_path):
    cfg = tiny_config(tmp_path, fl={"algorithm": "local", "local_client": "user2"}, data={"max_length": 64})
    with pytest.raises(RunError, match="fl.local_client='user2' cannot train: all 5 training samples"):
        run(cfg, dataset=truncation_federation())


def poisoning_transport(poisoned: set[str], value: float, rounds: set[int] | None = None):
    """The in-process transport, except that the named clients' updates arrive as ``value`` everywhere
    (a diverged or malicious client), in the given rounds (1-based; all if None)."""

    class Poisoned(InProcessTransport):
        def run(self, instructions):
            for ex in super().run(instructions):
                u = ex.reply.update
                if u.client_id in poisoned and (rounds is None or ex.reply.round + 1 in rounds):
                    u.delta = {k: torch.full_like(v, value) for k, v in u.delta.items()}
                yield ex

    return Poisoned


def test_non_finite_updates_are_dropped_and_the_run_stays_finite(tmp_path):
    cfg = tiny_config(tmp_path, fl={"algorithm": "fedadam", "rounds": 4, "clients_per_round": 4})
    sim, summary = run(cfg, transport=poisoning_transport({"user1"}, float("nan")))
    events = read_metrics(cfg.run_dir / "metrics.jsonl")
    drops = [e for e in events if e["event"] == "drop"]
    assert [(d["round"], d["client"]) for d in drops] == [(r, "user1") for r in (1, 2, 3, 4)]
    assert all("non-finite" in d["reason"] for d in drops)
    rounds = [e for e in events if e["event"] == "round"]
    assert all(r["dropped"] == 1 and "user1" not in r["aggregated"] and len(r["aggregated"]) == 3 for r in rounds)
    assert all(torch.isfinite(v).all() for v in sim.final_state.values())
    from safetensors.torch import load_file

    for ck in (cfg.run_dir / "checkpoints").iterdir():
        assert all(torch.isfinite(v).all() for v in load_file(str(ck / "adapter.safetensors")).values())
        assert all(torch.isfinite(v).all() for v in load_file(str(ck / "server.safetensors")).values())
    assert summary["dropped_updates"] == 4 and summary["skipped_rounds"] == []
    assert summary["final_eval"]["pooled_loss"] < read_metrics(cfg.run_dir / "metrics.jsonl", "eval")[0]["pooled_loss"]


def test_a_round_where_every_update_is_dropped_is_skipped(tmp_path):
    cfg = tiny_config(tmp_path, fl={"rounds": 3, "clients_per_round": 2, "max_update_norm": 1e6})
    sim, summary = run(cfg, transport=poisoning_transport({"user0", "user1", "user2", "user3"}, 1e9, rounds={2}))
    rounds = read_metrics(cfg.run_dir / "metrics.jsonl", "round")
    assert rounds[1]["skipped"] == "no client update survived validation" and rounds[1]["update_norm"] == 0.0
    assert rounds[0]["skipped"] is None and rounds[2]["skipped"] is None
    drops = read_metrics(cfg.run_dir / "metrics.jsonl", "drop")
    assert len(drops) == 2 and all("exceeds fl.max_update_norm=1e+06" in d["reason"] for d in drops)
    assert summary["skipped_rounds"] == [2]


def test_json_outputs_are_strict_even_when_numbers_are_not(tmp_path):
    """No held-out data at all: the losses are NaN, written as null, never as a bare NaN."""
    cfg = tiny_config(tmp_path, fl={"rounds": 1}, eval={"every": 1, "max_samples_per_client": 1})
    empty_tests = FederatedDataset.from_clients(
        "notest", [ClientData(c.id, train=c.train, test=[]) for c in (synthetic_federation()[i] for i in ("user0", "user1"))])
    _, summary = run(cfg, dataset=empty_tests)
    s = strict_json((cfg.run_dir / "summary.json").read_text())
    assert s["final_eval"]["pooled_loss"] is None
    for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines():
        strict_json(line)
    for ck in (cfg.run_dir / "checkpoints").iterdir():
        strict_json((ck / "state.json").read_text())


def test_an_aggregator_that_cannot_work_with_the_participation_is_refused(tmp_path):
    cfg = tiny_config(tmp_path, fl={"aggregator": "krum", "clients_per_round": 3})
    with pytest.raises(RunError, match=r"fl.aggregator krum with fl.clients_per_round=3: krum needs n > 2f \+ 2 updates, "
                                       r"got n=3 with f=1 .*lower byzantine to at most 0"):
        run(cfg)
    assert not cfg.run_dir.exists()


def test_too_few_survivors_for_krum_skip_the_round_with_the_reason(tmp_path):
    """byzantine=0 needs n > 2 updates: with one of the three sampled clients dropped, the round is skipped."""
    cfg = tiny_config(tmp_path, fl={"rounds": 2, "clients_per_round": 4, "aggregator": {"name": "krum", "byzantine": 0}})
    _, summary = run(cfg, transport=poisoning_transport({"user0", "user1"}, float("inf"), rounds={1}))
    rounds = read_metrics(cfg.run_dir / "metrics.jsonl", "round")
    assert rounds[0]["skipped"] == "aggregator krum: krum needs n > 2f + 2 updates, got n=2 with f=0 (byzantine); " \
                                   "sample at least 3 clients per round"
    assert rounds[1]["skipped"] is None and summary["skipped_rounds"] == [1]

