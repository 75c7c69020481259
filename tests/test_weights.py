"""Weight files: our safetensors, torchvision and timm state dicts in, torchvision and timm layouts out."""

import pytest
import timm
import torch
import torchvision

import vggnet
from vggnet.weights import read_state_dict


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope="module")
def x224():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["vgg11", "vgg13", "vgg16", "vgg19", "vgg16_bn"])
@pytest.mark.slow
def test_torchvision_round_trip(name, tmp_path, x224):
    torch.manual_seed(1)
    tv = getattr(torchvision.models, name)(num_classes=10).eval()
    if name.endswith("_bn"):  # make batch norm do something in eval mode
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"{name}.pth"
    torch.save(tv.state_dict(), path)
    ours = vggnet.create_model(name, num_classes=10)
    vggnet.load_weights(ours, path)
    ref = _logits(tv, x224)
    assert (_logits(ours, x224) - ref).abs().max() < 1e-4

    out = tmp_path / "export.pth"
    vggnet.export_weights(ours, out, layout="torchvision")
    tv2 = getattr(torchvision.models, name)(num_classes=10)
    tv2.load_state_dict(torch.load(out, weights_only=True))
    assert (_logits(tv2, x224) - ref).abs().max() < 1e-4


@pytest.mark.slow
def test_timm_round_trip(tmp_path, x224):
    torch.manual_seed(2)
    tm = timm.create_model("vgg16", pretrained=False, num_classes=10).eval()
    path = tmp_path / "timm_vgg16.pth"
    torch.save(tm.state_dict(), path)
    ours = vggnet.create_model("vgg16", num_classes=10)
    vggnet.load_weights(ours, path)
    ref = _logits(tm, x224)
    assert (_logits(ours, x224) - ref).abs().max() < 1e-4
    out = tmp_path / "export_timm.pth"
    vggnet.export_weights(ours, out, layout="timm")
    tm2 = timm.create_model("vgg16", pretrained=False, num_classes=10)
    tm2.load_state_dict(torch.load(out, weights_only=True))
    assert (_logits(tm2, x224) - ref).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["A-LRN", "C", "E_bn"])
def test_safetensors_round_trip_and_load_model(name, tmp_path):
    model = vggnet.create_model(name, num_classes=4, init="glorot", width=1 / 16, fc_width=32, crop_size=64)
    path = vggnet.save_weights(model, tmp_path / "w.safetensors")
    assert path.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle
    again = vggnet.load_model(path)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(_logits(model, x), _logits(again, x))
    assert again.arch == model.arch
    fresh = vggnet.create_model(name, num_classes=4, width=1 / 16, fc_width=32, crop_size=64)
    vggnet.load_weights(fresh, path)
    assert torch.equal(_logits(fresh, x), _logits(model, x))


def test_mismatches_name_the_file_and_the_fix(tmp_path):
    src = vggnet.create_model("A", num_classes=10, width=1 / 16, fc_width=32, crop_size=32)
    path = vggnet.save_weights(src, tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match=r"a\.safetensors.*classifier\.6\.weight.*head=False"):
        vggnet.load_weights(vggnet.create_model("A", num_classes=3, width=1 / 16, fc_width=32, crop_size=32), path)
    # head=False keeps the new head and loads the rest
    new = vggnet.create_model("A", num_classes=3, width=1 / 16, fc_width=32, crop_size=32)
    head_before = new.classifier[6].weight.clone()
    vggnet.load_weights(new, path, head=False)
    assert torch.equal(new.classifier[6].weight, head_before)
    assert torch.equal(new.features[0].weight, src.features[0].weight)
    with pytest.raises(ValueError, match="missing"):
        vggnet.load_weights(vggnet.create_model("B", num_classes=10, width=1 / 16, fc_width=32, crop_size=32), path)
    with pytest.raises(FileNotFoundError, match="nothere"):
        vggnet.load_weights(src, tmp_path / "nothere.pth")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello world, not weights")
    with pytest.raises(ValueError, match="junk.bin"):
        vggnet.load_weights(src, junk)


def test_loading_never_unpickles_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    path = tmp_path / "evil.pth"
    torch.save({"features.0.weight": torch.zeros(1), "x": Evil()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        read_state_dict(path)


def test_nested_and_ddp_prefixed_state_dicts(tmp_path):
    src = vggnet.create_model("A", num_classes=10, width=1 / 16, fc_width=32, crop_size=32, init="glorot")
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    dst = vggnet.create_model("A", num_classes=10, width=1 / 16, fc_width=32, crop_size=32)
    vggnet.load_weights(dst, path)
    assert torch.equal(dst.features[0].weight, src.features[0].weight)


def test_a_safetensors_header_that_starts_like_a_pickle_keeps_its_metadata(tmp_path):
    """A header length whose low byte is 0x80 (a pickle's first byte) is still read as safetensors, metadata and
    all: a run folder's path in the metadata once made net A's weights lose their architecture."""
    from safetensors.torch import save_file

    tensors = {"w": torch.zeros(3)}
    path = tmp_path / "w.safetensors"
    for pad in range(300):
        save_file(tensors, path, metadata={"vggnet.arch": '{"config": "A"}', "pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    sd, meta = read_state_dict(path)
    assert meta["vggnet.arch"] == '{"config": "A"}' and torch.equal(sd["w"], tensors["w"])
