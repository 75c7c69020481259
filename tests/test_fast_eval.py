"""Issue 26: nets built to load weights into draw no random weights; bf16 evaluation on the CPU stays within the
measured tolerance of float32; the CLI's start-up imports only what the command needs."""

import subprocess
import sys

import pytest
import torch

import vggnet
from vggnet import model as model_module
from vggnet.pretrained import load_pretrained
from vggnet.weights import export_weights, load_model

TINY = dict(num_classes=5, width=1 / 16, fc_width=24, crop_size=32)


def test_loading_weights_draws_no_random_weight(tmp_path, monkeypatch):
    """Every way of building a net for a file's weights loads them without initialising first: the global RNG
    is untouched and the paper's init never runs (it raises here); the loaded net equals the saved one."""
    src = vggnet.create_model("A", **TINY, init="kaiming", seed=0).eval()
    ours, tv, timm = tmp_path / "ours.safetensors", tmp_path / "tv.pth", tmp_path / "timm.pth"
    vggnet.save_weights(src, ours)
    export_weights(src, tv, "torchvision")
    export_weights(src, timm, "timm")

    def no_init(*args, **kwargs):
        raise AssertionError("a random init ran while building a net to load weights into")

    monkeypatch.setattr(model_module, "init_weights", no_init)
    loads = {
        "load_model": lambda: load_model(ours),
        "create_model(pretrained=ours)": lambda: vggnet.create_model("A", pretrained=ours),
        "torchvision layout": lambda: load_pretrained(None, tv, normalize="imagenet"),
        "timm layout": lambda: load_pretrained(None, timm, normalize="imagenet"),
    }
    x = torch.randn(2, 3, 32, 32)
    for what, load in loads.items():
        state = torch.random.get_rng_state()
        net = load().eval()
        assert torch.equal(torch.random.get_rng_state(), state), f"{what} drew random numbers"
        assert not any(p.is_meta for p in net.parameters()), what
        with torch.no_grad():
            torch.testing.assert_close(net(x), src(x), msg=what)
    state = torch.random.get_rng_state()
    feats = vggnet.create_model("A", pretrained=ours, features_only=True, out_indices=(4,))
    assert torch.equal(torch.random.get_rng_state(), state)
    with torch.no_grad():
        torch.testing.assert_close(feats(x)[0], src.features[:-1](x))
    # a net built for loading takes every layer of the file; a file with fewer layers is refused, nothing stays meta
    with pytest.raises(ValueError, match="missing"):
        vggnet.load_weights(model_module.meta_model(config="B", **TINY), ours)


def test_a_loaded_net_owns_float32_weights_of_a_bf16_file(tmp_path):
    """Tensors taken without a copy are cast to the net's dtype: a bf16 file gives a float32 net."""
    src = vggnet.create_model("A", **TINY, init="kaiming", seed=0)
    vggnet.save_weights(src.to(torch.bfloat16), tmp_path / "bf16.safetensors")
    net = load_model(tmp_path / "bf16.safetensors")
    assert {p.dtype for p in net.parameters()} == {torch.float32}
    torch.testing.assert_close(net.classifier[0].weight, src.classifier[0].weight.float())
