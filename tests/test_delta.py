import json

import pytest
import torch
from safetensors.torch import save_file

from dppa_peft.io.checkpoint import Checkpoint
from dppa_peft.delta.pair import CheckpointMismatchError, DeltaPair
from dppa_peft.delta.scope import Scope


def _folder(path, tensors, config=None):
    path.mkdir()
    save_file(tensors, path / "model.safetensors")
    if config:
        (path / "config.json").write_text(json.dumps(config))
    return Checkpoint(path)


def test_delta_is_fp32_difference_of_stored_weights(tmp_path):
    base = {"model.layers.0.mlp.up_proj.weight": torch.tensor([[1.0, 2.0]], dtype=torch.bfloat16)}
    ft = {"model.layers.0.mlp.up_proj.weight": torch.tensor([[1.0078125, 1.0]], dtype=torch.bfloat16)}
    pair = DeltaPair(_folder(tmp_path / "b", base), _folder(tmp_path / "f", ft))
    delta = pair.delta("model.layers.0.mlp.up_proj.weight")
    assert delta.dtype == torch.float32
    assert delta.tolist() == [[0.0078125, -1.0]]
    [info] = pair.infos
    assert (info.block, info.module, info.in_scope) == (0, "mlp.up_proj", True)


def test_architecture_mismatch_is_named(tmp_path):
    t = {"w": torch.zeros(2, 2)}
    with pytest.raises(CheckpointMismatchError, match="hidden_size"):
        DeltaPair(_folder(tmp_path / "b", t, {"hidden_size": 64}), _folder(tmp_path / "f", t, {"hidden_size": 32}))


def test_different_tensor_names_are_listed(tmp_path):
    with pytest.raises(CheckpointMismatchError, match=r"only in base \['a'\].*only in fine-tune \['b'\]"):
        DeltaPair(_folder(tmp_path / "b", {"a": torch.zeros(1)}), _folder(tmp_path / "f", {"b": torch.zeros(1)}))


def test_shape_mismatch_outside_vocabulary_is_an_error(tmp_path):
    name = "model.layers.0.mlp.up_proj.weight"
    with pytest.raises(CheckpointMismatchError, match="only embedding/lm_head rows may grow"):
        DeltaPair(
            _folder(tmp_path / "b", {name: torch.zeros(2, 2)}), _folder(tmp_path / "f", {name: torch.zeros(3, 2)})
        )


def test_added_vocabulary_rows_are_stored_whole(tmp_path):
    name = "model.embed_tokens.weight"
    base = _folder(tmp_path / "b", {name: torch.ones(2, 3)})
    ft = _folder(tmp_path / "f", {name: torch.full((4, 3), 3.0)})
    pair = DeltaPair(base, ft)
    assert pair.extra_rows == {name: 2}
    assert pair.delta(name).tolist() == [[2.0] * 3, [2.0] * 3, [3.0] * 3, [3.0] * 3]


def test_scope_works_for_other_containers_and_rejects_bad_patterns():
    scope = Scope()
    assert scope.classify("transformer.h.3.attn.c_attn.weight", (4, 4)).block == 3
    assert not scope.classify("model.layers.0.input_layernorm.weight", (4,)).in_scope
    assert not scope.classify("model.embed_tokens.weight", (4, 4)).in_scope
    with pytest.raises(ValueError, match="named groups"):
        Scope(r"layers\.(\d+)")


def test_to_float32_widens_every_bf16_bit_pattern_exactly():
    from dppa_peft.delta.pair import to_float32

    every = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).reshape(256, 256)
    wide = to_float32(every)
    assert wide.dtype == torch.float32 and wide.shape == (256, 256)
    assert torch.equal(wide.view(torch.int32), every.float().view(torch.int32))
