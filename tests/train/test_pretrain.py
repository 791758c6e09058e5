"""Self-supervised pretraining of the trunk (issue: beyond the paper without ImageNet)."""

import json

import pytest
import torch

from koa_core.cli import main
from koa_core.errors import KoaError

pytest.importorskip("lightly")


def test_pretrain_writes_a_trunk_that_model_pretrained_loads(phantom_copy, tmp_path, capsys,
                                                             tree_hash):
    """Two tiny epochs on the phantom's train+val knees: the trunk changes from its seeded
    initialisation, loads into the model through model.pretrained, and the test split is
    never read (its files are moved away: pretraining still runs)."""
    import shutil

    from koa_core.config import ModelConfig
    from koa_core.model.network import build_model, resnet_trunk
    from koa_core.train.pretrain import trunk_state_dict

    shutil.move(phantom_copy / "test", tmp_path / "held-out-test")
    before = tree_hash(phantom_copy)
    out = tmp_path / "trunk.safetensors"
    assert main(["pretrain", "--data", str(phantom_copy), "--out", str(out), "--epochs", "2",
                 "--batch-size", "8", "--size", "32", "--max-steps-per-epoch", "2",
                 "--quiet"]) == 0
    assert "model.pretrained=" in capsys.readouterr().out
    assert tree_hash(phantom_copy) == before
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["data"]["splits"] == ["train", "val"] and "test" not in side["data"]["counts"]
    assert [h["epoch"] for h in side["history"]] == [1, 2]
    assert all(h["loss"] > 0 for h in side["history"])
    from safetensors.torch import load_file

    state = load_file(str(out))
    assert "conv1.weight" in state and "layer4.1.bn2.running_var" in state
    torch.manual_seed(0)
    fresh = trunk_state_dict(resnet_trunk())
    assert set(state) == set(fresh)
    model = build_model(ModelConfig(pretrained=str(out)))
    loaded = trunk_state_dict(model.trunk)
    for k in state:
        torch.testing.assert_close(loaded[k], state[k])
    # batch-norm statistics were updated by training: the weights are not an initialisation
    assert not torch.equal(state["bn1.running_mean"], fresh["bn1.running_mean"])


def test_pretrain_settings_are_checked(phantom_root, tmp_path):
    from koa_core.train.pretrain import PretrainConfig, pretrain

    for cfg, match in ((PretrainConfig(batch_size=1), "at least 2"),
                       (PretrainConfig(image_size=16), "at least 32"),
                       (PretrainConfig(temperature=0.0), "temperature"),
                       (PretrainConfig(lr=float("nan")), "lr")):
        with pytest.raises(KoaError, match=match):
            pretrain(phantom_root, tmp_path / "t.safetensors", cfg)
    with pytest.raises(KoaError, match="safetensors"):
        pretrain(phantom_root, tmp_path / "t.pt", PretrainConfig())
    with pytest.raises(KoaError, match="no such folder"):
        pretrain(phantom_root, tmp_path / "no" / "t.safetensors", PretrainConfig())
