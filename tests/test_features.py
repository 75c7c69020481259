"""The feature API on all six configs: forward_features/head, intermediates by the paper's layer names,
features_only with feature_info, non-inplace ReLU for hooks, torch.jit.script / torch.fx / torch.export, and
the perceptual loss."""

import warnings

import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor

import vggnet
from vggnet.architectures import CONFIGS
from vggnet.perceptual import PerceptualLoss, gram

TINY = dict(width=0.125, fc_width=64, crop_size=32)
NETS = list(CONFIGS) + ["D-BN"]


def tiny(name, **kw):
    return vggnet.create_model(name, num_classes=10, init="kaiming", seed=0, **dict(TINY, **kw)).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", NETS)
def test_head_features_and_intermediates(name, x):
    m = tiny(name)
    with torch.no_grad():
        logits = m(x)
        f = m.forward_features(x)
        assert torch.equal(m.forward_head(f), logits)
        assert m.forward_head(f, pre_logits=True).shape == (2, 64)
        assert m.get_classifier() is m.classifier[6]
        inter = m.forward_intermediates(x, m.layer_names)
    assert list(inter) == m.layer_names
    assert torch.equal(inter["fc8"], logits) and torch.equal(inter["pool5"], f)
    blocks = {
        "A": (1, 1, 2, 2, 2),
        "A-LRN": (1, 1, 2, 2, 2),
        "B": (2, 2, 2, 2, 2),
        "C": (2, 2, 3, 3, 3),
        "D": (2, 2, 3, 3, 3),
        "E": (2, 2, 4, 4, 4),
        "D-BN": (2, 2, 3, 3, 3),
        "B-5x5": (1, 1, 1, 1, 1),
    }[name]
    for b, n in enumerate(blocks, 1):
        last = f"conv{b}_{n}"
        assert last in inter and f"conv{b}_{n + 1}" not in inter
        side = 32 >> (b - 1)
        assert inter[last].shape[-2:] == (side, side) and inter[f"pool{b}"].shape[-1] == side // 2
        # the conv output is its true pre-activation (kept from the in-place ReLU); the ReLU's is its clamp
        pre = inter[f"bn{b}_{n}"] if name == "D-BN" else inter[last]
        assert (pre < 0).any() and torch.equal(inter[f"relu{b}_{n}"], pre.clamp(min=0))
    if name == "A-LRN":
        assert "lrn1" in inter
    if name == "C":
        assert m.features[m.layer_names.index("conv3_3")].kernel_size == (1, 1)
    assert torch.equal(inter["relu7"], inter["drop7"])  # eval mode: dropout is the identity
    only = m.forward_intermediates(x, ["relu2_1", "conv1_1"])
    assert list(only) == ["relu2_1", "conv1_1"]
    with pytest.raises(ValueError, match="unknown layer"):
        m.forward_intermediates(x, ["conv9_9"])


@pytest.mark.parametrize("name", NETS)
def test_features_only_stages(name, x):
    f = vggnet.create_model(name, features_only=True, **TINY)
    assert not any(isinstance(m, torch.nn.Linear) for m in f.modules())
    with torch.no_grad():
        maps = f(x)
    assert [t.shape[1] for t in maps] == f.feature_info.channels()
    assert [32 // t.shape[-1] for t in maps] == f.feature_info.reduction() == [1, 2, 4, 8, 16]
    last = vggnet.create_model(name, features_only=True, out_indices=(5,), **TINY)
    assert last(x)[0].shape[-1] == 1 and last.feature_info.reduction() == [32]
    with pytest.raises(ValueError, match="out_indices"):
        vggnet.create_model(name, features_only=True, out_indices=(6,), **TINY)


def test_features_only_full_size_never_allocates_fc6():
    with torch.device("meta"):  # nothing is allocated or run: shapes only
        full = vggnet.create_model("vgg16")
        feats = vggnet.create_model("vgg16", features_only=True, out_indices=(5,))
    conv = sum(p.numel() for p in full.features.parameters())
    assert sum(p.numel() for p in feats.parameters()) == conv == 14_714_688
    assert sum(p.numel() for p in full.parameters()) - conv == 123_642_856  # fc6 alone: 102,764,544
    with torch.device("meta"):
        truncated = vggnet.create_model("vgg16", features_only=True, out_indices=(2,))
    assert len(truncated.features) == 16  # up to relu3_3: deeper layers are not built either


def test_non_inplace_relu_lets_hooks_see_the_conv_output(x):
    seen = {}
    for inplace in (True, False):
        m = tiny("D", inplace_relu=inplace)
        m.features[0].register_forward_hook(lambda mod, i, o, k=inplace: seen.__setitem__(k, o))
        with torch.no_grad():
            m(x)
    assert (seen[False] < 0).any()  # the true conv output
    assert not (seen[True] < 0).any()  # overwritten by the in-place ReLU after the hook ran


@pytest.mark.parametrize("name", NETS)
def test_script_fx_and_export(name, x):
    m = tiny(name)
    with torch.no_grad():
        ref = m(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.script's deprecation notice
            scripted = torch.jit.script(m)
        assert torch.allclose(scripted(x), ref, atol=1e-6)
        assert torch.allclose(torch.fx.symbolic_trace(m)(x), ref, atol=1e-6)
        fx = create_feature_extractor(m, {"features.0": "conv1_1", "classifier.6": "fc8"})(x)
        assert torch.allclose(fx["fc8"], ref, atol=1e-6) and fx["conv1_1"].shape[1] == m.features[0].out_channels
        exported = torch.export.export(m, (x,))
        assert torch.allclose(exported.module()(x), ref, atol=1e-6)


def test_perceptual_loss_gradients_reach_the_input_only():
    net = tiny("D")
    net.pretrained_cfg = vggnet.pretrained.normalization_cfg("imagenet", crop=32)[0]
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, 32, 32, generator=g)
    for style in (False, True):
        loss_fn = PerceptualLoss(net, layers=["relu1_2", "relu2_2", "relu3_3"], weights=[1, 0.5, 0.25], style=style)
        loss_fn.train()
        assert not loss_fn.net.training
        img = torch.rand(2, 3, 32, 32, generator=g, requires_grad=True)
        loss = loss_fn(img, target)
        loss.backward()
        assert loss.item() > 0 and img.grad is not None and img.grad.abs().sum() > 0
        assert all(p.grad is None and not p.requires_grad for p in loss_fn.parameters())
        assert loss_fn(target, target).item() == 0
    # features at the named layers, on the weights' own normalisation
    feats = loss_fn.features(target)
    with torch.no_grad():
        want = net.forward_intermediates(
            vggnet.transforms(net).transforms[-1](target), ["relu1_2", "relu2_2", "relu3_3"]
        )
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-5) for a, b in zip(feats, want.values()))  # x * scale + offset
    assert gram(feats[0]).shape == (2, feats[0].shape[1], feats[0].shape[1])
    with pytest.raises(ValueError, match="--normalize"):
        PerceptualLoss(tiny("D"))
    by_name = PerceptualLoss("vgg16", normalize="caffe", layers=["relu2_2"], **TINY)
    assert len(by_name.net.features) == 9 and by_name(target, target).item() == 0
