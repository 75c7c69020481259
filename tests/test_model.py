"""The six networks of Table 1: shapes, parameter counts, dense mode, against torchvision and timm."""

import pytest
import torch
import torchvision

import vggnet
from vggnet.architectures import CONFIGS, TABLE1, weight_layers

TINY = dict(width=1 / 16, fc_width=32, crop_size=32)

PAPER_PARAMS = {
    "A": 132_863_336,
    "A-LRN": 132_863_336,
    "B": 133_047_848,
    "C": 133_638_952,
    "D": 138_357_544,
    "E": 143_667_240,
}


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_parameter_counts_match_table_2(name):
    with torch.device("meta"):
        model = vggnet.create_model(name)
    assert count(model) == PAPER_PARAMS[name]


@pytest.mark.parametrize("tv", ["vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg16_bn", "vgg19_bn"])
def test_parameter_counts_equal_torchvision(tv):
    with torch.device("meta"):
        ours = vggnet.create_model(tv)
        theirs = getattr(torchvision.models, tv)()
    assert count(ours) == count(theirs)


def test_weight_layers_and_flops():
    assert [weight_layers(c) for c in TABLE1] == [11, 11, 13, 16, 16, 19]
    assert set(CONFIGS) == {*TABLE1, "B-5x5"}
    with torch.device("meta"):
        d = vggnet.create_model("D")
    assert round(d.macs(224) / 1e9, 2) == 15.47  # the paper's 15.47 GMAC


def test_macs_agree_with_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    model = vggnet.create_model("C", num_classes=7, **TINY)
    for h, w in [(32, 32), (64, 96), (40, 70)]:  # (40, 70): map sides rounded up by the ceil-mode pools
        x = torch.randn(1, 3, h, w)
        with FlopCounterMode(display=False) as fc:
            model.forward(x) if (h, w) == (32, 32) else model.dense(x)
        assert fc.get_total_flops() == 2 * model.macs(h, w)


def test_registry_has_the_six_configs_and_aliases():
    names = vggnet.list_models()
    for n in ["A", "A-LRN", "B", "C", "D", "E", "vgg11", "vgg16", "vgg16_bn", "vgg19_bn"]:
        assert n in names
    assert vggnet.parse_name("vgg16") == ("D", False)
    assert vggnet.parse_name("vgg16_bn") == ("D", True)
    assert vggnet.parse_name("a-lrn") == ("A-LRN", False)
    with pytest.raises(ValueError, match="unknown VGG model"):
        vggnet.create_model("vgg17")


@pytest.mark.parametrize("name", vggnet.list_models())
def test_every_registered_net_forward_backward(name):
    model = vggnet.create_model(name, num_classes=5, init="glorot", **TINY)
    x = torch.randn(2, 3, 32, 32)
    y = model(x)
    assert y.shape == (2, 5)
    assert torch.isfinite(y).all()
    y.square().sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_structure_of_special_configs():
    a_lrn = vggnet.create_model("A-LRN", **TINY)
    assert isinstance(a_lrn.features[2], torch.nn.LocalResponseNorm)
    assert sum(isinstance(m, torch.nn.LocalResponseNorm) for m in a_lrn.modules()) == 1
    c = vggnet.create_model("C", **TINY)
    ks = [m.kernel_size[0] for _, _, m in c.conv_layers()]
    assert ks == [3, 3, 3, 3, 3, 3, 1, 3, 3, 1, 3, 3, 1]
    bn = vggnet.create_model("vgg13_bn", **TINY)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules()) == 10


def test_lrn_is_alexnets():
    """b = a / (k + alpha * sum over 5 neighbouring channels of a^2)^beta, alpha=1e-4 (not divided by 5)."""
    lrn = vggnet.create_model("A-LRN", **TINY).features[2]
    a = torch.randn(1, 9, 2, 2) * 30
    sq = torch.nn.functional.pad(a.square(), (0, 0, 0, 0, 2, 2))
    window = sum(sq[:, i : i + 9] for i in range(5))
    assert torch.allclose(lrn(a), a / (2 + 1e-4 * window) ** 0.75, atol=1e-6)


def test_knobs():
    m = vggnet.create_model("B", num_classes=3, width=0.25, fc_width=64, crop_size=64, dropout=0.1)
    assert m.features[0].out_channels == 16
    assert m.classifier[0].in_features == 128 * 2 * 2
    assert m.classifier[0].out_features == 64
    assert m.classifier[2].p == 0.1
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(ValueError, match="multiple of 32"):
        vggnet.create_model("A", crop_size=100)
    with pytest.raises(ValueError, match="dense"):
        m(torch.randn(1, 3, 96, 96))


# ---- dense mode -------------------------------------------------------------------------------------------


def test_dense_at_crop_size_equals_fc_head():
    model = vggnet.create_model("D", num_classes=10, width=1 / 8, fc_width=64, init="glorot").eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        dense = model.dense(x)
        assert dense.shape == (2, 10, 1, 1)
        assert torch.allclose(vggnet.spatial_average(dense), model(x), atol=1e-4)


def test_dense_score_map_cells_are_windows():
    model = vggnet.create_model("A", num_classes=10, width=1 / 8, fc_width=64, init="glorot").eval()
    x = torch.randn(1, 3, 256, 320)
    with torch.no_grad():
        scores = model.dense(x)
        assert scores.shape == (1, 10, 2, 4)
        # Cell (i, j) is the FC head on the 7x7 window at (i, j) of the last conv map, which sees the image
        # window at (32i, 32j). (A 224 crop of the image is not exactly that window: the convs' zero padding
        # falls on the crop's borders, where the whole image has pixels.)
        f = model.features(x)
        for i, j in [(0, 0), (1, 3), (0, 2)]:
            head = model.classifier(torch.flatten(f[..., i : i + 7, j : j + 7], 1))
            assert torch.allclose(scores[..., i, j], head, atol=1e-5)
        assert model.dense(x, head=False).shape == (1, 64, 2, 4)
    with pytest.raises(ValueError, match="at least 224"):
        model.dense(torch.randn(1, 3, 200, 300))


def test_dense_corner_cell_equals_crop_without_padding_effects():
    """With padding removed the convs see only their window, so a corner cell equals the head on the crop."""
    model = vggnet.create_model("A", num_classes=10, width=1 / 8, fc_width=64, init="glorot").eval()
    for m in model.features:
        if isinstance(m, torch.nn.Conv2d):
            m.padding = (0, 0)
    # without padding a 150x150 crop shrinks to a 1x1 map: that is the crop, and the head sees one position
    model.positions = 1
    model.classifier[0] = torch.nn.Linear(model.feature_channels, 64)
    x = torch.randn(1, 3, 182, 214)
    with torch.no_grad():
        scores = model.dense(x)
        assert scores.shape[-2:] == (2, 3)
        for cell, crop in [((0, 0), x[..., :150, :150]), ((-1, -1), x[..., -150:, -150:])]:
            f = model.features(crop)
            assert f.shape[-2:] == (1, 1)
            assert torch.allclose(scores[..., cell[0], cell[1]], model.classifier(f.flatten(1)), atol=1e-5)


def _floor_mode_copy(model):
    """The same net with torch's default floor-mode pools (what dense evaluation did before ceil mode)."""
    import copy

    floor = copy.deepcopy(model)
    for m in floor.features:
        if isinstance(m, torch.nn.MaxPool2d):
            m.ceil_mode = False
    return floor


def test_ceil_mode_pools_are_bit_identical_at_multiples_of_32():
    model = vggnet.create_model("B", num_classes=10, width=1 / 16, fc_width=32, crop_size=64, init="glorot").eval()
    assert all(m.ceil_mode for m in model.features if isinstance(m, torch.nn.MaxPool2d))
    floor = _floor_mode_copy(model)
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64)  # the crop size: the FC head
        assert torch.equal(model(x), floor(x))
        for h, w in [(64, 64), (96, 128), (128, 64)]:
            x = torch.randn(1, 3, h, w)
            assert torch.equal(model.dense(x), floor.dense(x))


def test_dense_map_covers_a_non_multiple_of_32():
    """The paper's Q fixes the short side only: a 375x500 photo at Q=256 is 256x341; Caffe's rounded-up pools
    give a 2x5 map (floor mode: 2x4, the last 21 columns outside every window)."""
    model = vggnet.create_model("A", num_classes=10, width=1 / 16, fc_width=32, init="glorot").eval()
    with torch.no_grad():
        assert model.dense(torch.randn(1, 3, 256, 341)).shape == (1, 10, 2, 5)
        assert _floor_mode_copy(model).dense(torch.randn(1, 3, 256, 341)).shape == (1, 10, 2, 4)
    assert model.macs(256, 341) > _floor_mode_copy(model).macs(256, 320)
    tiny = vggnet.create_model("A", num_classes=10, **TINY, init="glorot").eval()
    x = torch.randn(1, 3, 40, 70)
    with torch.no_grad():
        scores = tiny.dense(x)
        assert scores.shape[-2:] == (2, 3)  # ceil(40/32) x ceil(70/32) windows of one position
        last_col, last_row = x.clone(), x.clone()
        last_col[..., :, -1] += 1
        last_row[..., -1, :] += 1
        # the last cell of each side has the perturbed pixels in its own window
        assert ((tiny.dense(last_col) - scores).abs().amax(dim=1)[0, :, -1] > 0).all()
        assert ((tiny.dense(last_row) - scores).abs().amax(dim=1)[0, -1, :] > 0).all()


def test_dense_shares_weights():
    model = vggnet.create_model("A", **TINY)
    n = count(model)
    model.dense(torch.randn(1, 3, 64, 64))
    assert count(model) == n
    assert not any("dense" in k for k in model.state_dict())


# ---- init ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme, std", [("paper", 0.01), ("paper-literal", 0.1)])
def test_paper_init_statistics(scheme, std):
    # the default reads the paper's "variance 1e-2" as the authors' Caffe filler, std 0.01 (docs/paper-check.md)
    model = vggnet.create_model(
        "A", num_classes=100, width=0.25, fc_width=512, **({} if scheme == "paper" else {"init": scheme})
    )
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            if m.weight.numel() >= 1000:
                assert abs(m.weight.std().item() - std) < 0.05 * std, m
                assert abs(m.weight.mean().item()) < 0.1 * std
            assert (m.bias == 0).all()


def test_glorot_and_seeded_init():
    a = vggnet.create_model("A", init="glorot", seed=3, **TINY)
    b = vggnet.create_model("A", init="glorot", seed=3, **TINY)
    conv = a.features[3]
    fan_in, fan_out = conv.weight[0].numel(), conv.out_channels * 9
    bound = (6 / (fan_in + fan_out)) ** 0.5
    assert conv.weight.abs().max() <= bound
    assert abs(conv.weight.std().item() - bound / 3**0.5) < 0.1 * bound
    for (_, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="unknown init"):
        vggnet.create_model("A", init="zeros")


@pytest.mark.parametrize("deeper", ["B", "C", "D", "E", "A-LRN"])
def test_init_from_net_a(deeper):
    a = vggnet.create_model("A", num_classes=10, init="glorot", seed=1, **TINY)
    net = vggnet.create_model(deeper, num_classes=10, init="glorot", seed=2, **TINY)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    copied = vggnet.init_from_net_a(net, a)
    assert len(copied) == 7
    a_convs = a.conv_layers()
    convs = {(b, p): m for b, p, m in net.conv_layers()}
    for b, p, src in a_convs[:4]:
        assert torch.equal(convs[(b, p)].weight, src.weight)
    for src, dst in zip(a.fc_layers(), net.fc_layers()):
        assert torch.equal(src.weight, dst.weight) and torch.equal(src.bias, dst.bias)
    names = {n for n, m in net.named_modules() if m in [convs[(b, p)] for b, p, _ in a_convs[:4]]}
    assert names | {"classifier.0", "classifier.3", "classifier.6"} == set(copied)
    # every other layer keeps its own random init, and differs from net A's
    for key, value in net.state_dict().items():
        layer = key.rsplit(".", 1)[0]
        if layer not in copied and key.endswith("weight"):
            assert torch.equal(value, before[key]), key
    assert not torch.equal(convs[(4, 0)].weight, a_convs[-2][2].weight)


def test_b_5x5_is_section_4_1s_control_net():
    """B with each pair of 3x3 convs replaced by one 5x5 conv: 5 convs 64-128-256-512-512, 8 weight layers."""
    assert weight_layers("B-5x5") == 8
    with torch.device("meta"):
        net = vggnet.create_model("B-5x5")
    assert count(net) == 134_503_528
    assert [(m.kernel_size, m.padding, m.out_channels) for _, _, m in net.conv_layers()] == [
        ((5, 5), (2, 2), c) for c in (64, 128, 256, 512, 512)
    ]
    assert [b for b, _, _ in net.conv_layers()] == [0, 1, 2, 3, 4]  # one conv a block, a pool after each
    assert vggnet.parse_name("b-5x5_bn") == ("B-5x5", True)
    assert "B-5x5" in vggnet.list_models()
    tiny = vggnet.create_model("B-5x5", num_classes=10, init="glorot", **TINY).eval()
    with torch.no_grad():
        assert tiny.dense(torch.randn(1, 3, 64, 80)).shape == (1, 10, 2, 3)


def test_init_from_net_a_gives_b_5x5_only_the_fc_layers():
    a = vggnet.create_model("A", num_classes=10, init="glorot", seed=1, **TINY)
    net = vggnet.create_model("B-5x5", num_classes=10, init="glorot", seed=2, **TINY)
    convs = [m.weight.clone() for _, _, m in net.conv_layers()]
    assert vggnet.init_from_net_a(net, a) == ["classifier.0", "classifier.3", "classifier.6"]
    for src, dst in zip(a.fc_layers(), net.fc_layers()):
        assert torch.equal(src.weight, dst.weight)
    assert all(torch.equal(w, m.weight) for w, (_, _, m) in zip(convs, net.conv_layers()))


def test_init_from_net_a_shape_mismatch_names_the_layer():
    a = vggnet.create_model("A", num_classes=10, **TINY)
    d = vggnet.create_model("D", num_classes=12, **TINY)
    with pytest.raises(ValueError, match="classifier.6"):
        vggnet.init_from_net_a(d, a)


def test_kaiming_init_keeps_the_scale():
    model = vggnet.create_model("A", num_classes=100, width=0.5, fc_width=512, init="kaiming", seed=0)
    conv = model.features[3]  # conv3-64 at half width: 32 -> 64 channels
    assert abs(conv.weight.std().item() - (2 / (32 * 9)) ** 0.5) < 0.05 * (2 / (32 * 9)) ** 0.5
    fc2, fc3 = model.classifier[3], model.classifier[6]
    assert abs(fc2.weight.std().item() - (2 / 512) ** 0.5) < 0.05 * (2 / 512) ** 0.5
    assert abs(fc3.weight.std().item() - (1 / 512) ** 0.5) < 0.05 * (1 / 512) ** 0.5


def _assert_dense_is_head_on_every_window(model, x):
    """Every cell of the dense score map (and of the fc7 map) equals the FC head on its window of pool5."""
    p = model.positions
    with torch.no_grad():
        f = model.features(x)
        scores, fc7 = model.dense(x), model.dense(x, head=False)
        h, w = f.shape[-2] - p + 1, f.shape[-1] - p + 1
        assert scores.shape == (x.shape[0], model.num_classes, h, w)
        for i in range(h):
            for j in range(w):
                window = torch.flatten(f[..., i : i + p, j : j + p], 1)
                torch.testing.assert_close(scores[..., i, j], model.forward_head(window), rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(
                    fc7[..., i, j], model.forward_head(window, pre_logits=True), rtol=1e-5, atol=1e-5
                )
        # the graph-export path (FC weights viewed as convolutions) computes the same map
        torch.testing.assert_close(scores, model._dense_head_conv(f), rtol=1e-5, atol=1e-5)
    return scores


def test_dense_equals_head_on_every_window_after_training_and_loading(tmp_path):
    """Dense mode reads the stored Linear weights on each call: a training step and a weight load change the
    score map at once, and it stays the FC head on every window (no cached copy that could go stale)."""
    torch.manual_seed(0)
    model = vggnet.create_model("A", num_classes=5, width=1 / 16, fc_width=24, crop_size=64, init="kaiming", seed=0)
    x = torch.randn(2, 3, 96, 128).contiguous(memory_format=torch.channels_last)
    before = _assert_dense_is_head_on_every_window(model.eval(), x)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    trained = _assert_dense_is_head_on_every_window(model.eval(), x)
    assert not torch.allclose(before, trained)
    other = vggnet.create_model("A", num_classes=5, width=1 / 16, fc_width=24, crop_size=64, init="glorot", seed=1)
    vggnet.save_weights(other, tmp_path / "other.safetensors")
    vggnet.load_weights(model, tmp_path / "other.safetensors")
    loaded = _assert_dense_is_head_on_every_window(model, x)
    with torch.no_grad():
        torch.testing.assert_close(loaded, other.eval().dense(x))
    assert not torch.allclose(loaded, trained)


def test_dense_in_chunks_equals_one_pass(monkeypatch):
    """Images whose windows would not fit one matrix go in chunks; the map is the same."""
    from vggnet import model as model_module

    model = vggnet.create_model("A", num_classes=5, **TINY, init="kaiming", seed=0).eval()
    x = torch.randn(5, 3, 64, 96)
    with torch.no_grad():
        whole = model.dense(x)
        monkeypatch.setattr(model_module, "DENSE_WINDOW_ELEMENTS", 1)  # one image a chunk
        torch.testing.assert_close(model.dense(x), whole)
    _assert_dense_is_head_on_every_window(model, x)


def test_num_classes_zero_returns_pooled_pre_logits_as_timm():
    """timm's habit: num_classes=0 leaves the last layer out; forward gives fc7's features, dense their map."""
    torch.manual_seed(0)
    full = vggnet.create_model("A", num_classes=7, width=1 / 16, fc_width=24, crop_size=32, init="kaiming").eval()
    bare = vggnet.create_model("A", num_classes=0, width=1 / 16, fc_width=24, crop_size=32, init="kaiming").eval()
    assert isinstance(bare.get_classifier(), torch.nn.Identity) and bare.num_classes == 0
    bare.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("classifier.6")})
    x = torch.randn(2, 3, 32, 32)
    big = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(bare(x), full.forward_head(full.forward_features(x), pre_logits=True))
        assert bare(x).shape == (2, 24)
        torch.testing.assert_close(bare.dense(big), full.dense(big, head=False))
    full.reset_classifier(0)  # and back to pre-logits from a trained head
    assert isinstance(full.get_classifier(), torch.nn.Identity) and len(full.fc_layers()) == 2
    with pytest.raises(ValueError, match="num_classes"):
        vggnet.create_model("A", num_classes=-1)


def test_forward_intermediates_by_timm_indices_beside_the_paper_names():
    m = vggnet.create_model("A", num_classes=5, width=1 / 16, fc_width=16, crop_size=32, init="kaiming").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, stages = m.forward_intermediates(x, indices=3)  # the last three stages of feature_info
        assert [t.shape[1] for t in stages] == [s["num_chs"] for s in m.feature_info[-3:]]
        torch.testing.assert_close(final, m.forward_features(x))
        named = m.forward_intermediates(x, [s["name"] for s in m.feature_info[-3:]])
        for t, (name, ref) in zip(stages, named.items()):
            torch.testing.assert_close(t, ref, msg=name)
        only = m.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
        assert isinstance(only, list) and only[0].shape[-1] == 64 and only[1].shape[-1] == 2
        early, (first,) = m.forward_intermediates(x, indices=[0], stop_early=True)
        torch.testing.assert_close(early, first)
    with pytest.raises(ValueError, match="out of range"):
        m.forward_intermediates(x, indices=[9])
    with pytest.raises(ValueError, match="not both"):
        m.forward_intermediates(x, ["pool5"], indices=1)
