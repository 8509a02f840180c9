"""Cost metrics: the FLOPs estimate's parameter counts and arithmetic."""

from __future__ import annotations

from fedllm.config import build_config
from fedllm.train.cost import ModelShape, train_flops
from fedllm.models.adapters import AdapterSlot, attach_adapter
from fedllm.models.tiny import build_tiny_model


def test_model_shape_counts_body_adapter_and_head():
    model = attach_adapter(build_tiny_model(), build_config({"lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}}))
    shape = ModelShape.of(model)
    # tiny model: hidden 64, 2 layers, 4 heads / 2 KV heads (k, v project to 32), MLP 128, vocab 1000, tied head
    per_layer = 64 * 64 + 2 * (32 * 64) + 64 * 64 + 3 * (128 * 64) + 2 * 64  # q, k+v, o, gate/up/down, two norms
    assert per_layer == 36_992
    assert shape.body_params == 2 * per_layer + 64  # + the final norm; embeddings and head excluded
    # LoRA r=4 on q (64->64: A 4x64, B 64x4) and v (64->32: A 4x64, B 32x4), in both layers
    assert shape.adapter_params == AdapterSlot(model).num_parameters() == 2 * ((256 + 256) + (256 + 128)) == 1792
    assert shape.head_params == 64 * 1000


def test_train_flops_by_hand():
    shape = ModelShape(body_params=1000, adapter_params=10, head_params=200)
    # 4·1000·50 + 6·10·50 + 6·200·20 = 200000 + 3000 + 24000
    assert train_flops(shape, tokens=50, labelled_tokens=20) == 227_000.0

