"""Pretrained weights on request: every source served from 127.0.0.1 (never the real network), hashes, bad files,
offline errors, fine-tuning heads, the input convention (pretrained_cfg, transforms) and the Caffe fold."""

import hashlib
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import vggnet
import vggnet.pretrained as P
from vggnet.weights import save_weights, to_timm, to_torchvision

sys.path.insert(0, str(Path(__file__).parent))
from _weights_server import WeightsServer  # noqa: E402

TINY = dict(width=0.125, fc_width=64, crop_size=32)


def tiny(name="vgg11", num_classes=1000, seed=0):
    return vggnet.create_model(name, num_classes=num_classes, seed=seed, init="kaiming", **TINY).eval()


def caffe_layout(model) -> dict[str, torch.Tensor]:
    """A state dict in the layout of the files at the caffe: URLs: torchvision's features, and the older head with
    FC1, FC2, FC3 at classifier.1, classifier.4, classifier.6 (public download scripts rename them to 0 and 3)."""
    rename = {"classifier.0.": "classifier.1.", "classifier.3.": "classifier.4."}
    out = {}
    for k, v in to_torchvision(model).items():
        old = next((o for o in rename if k.startswith(o)), None)
        out[rename[old] + k[len(old) :] if old else k] = v
    return out


def hashed(path: Path, stem: str) -> str:
    """Rename ``path`` to torchvision's ``<stem>-<sha256 prefix>.pth`` convention; returns the new name."""
    name = f"{stem}-{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}.pth"
    path.rename(path.parent / name)
    return name


@pytest.fixture
def served(tmp_path, monkeypatch):
    """Tiny weight files for every named source behind a local server; torch.hub's and the Hub's caches in tmp."""
    root = tmp_path / "srv"
    (root / "hub/timm/vgg11.tv_in1k").mkdir(parents=True)
    ref = tiny("vgg11")
    torch.save(to_torchvision(ref), root / "tv.pth")
    tv_name = hashed(root / "tv.pth", "vgg11")
    save_file({k: v.contiguous() for k, v in to_timm(ref).items()}, root / "hub/timm/vgg11.tv_in1k/model.safetensors")
    caffe_ref = tiny("vgg16", seed=1)
    torch.save(caffe_layout(caffe_ref), root / "caffe.pth")  # the real files' head: classifier.1, .4, .6
    caffe_name = hashed(root / "caffe.pth", "vgg16")
    server = WeightsServer(root)
    old_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torchhub"))
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hfcache"))
    monkeypatch.delenv("VGGNET_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(P, "TORCHVISION_URL", server.url)
    monkeypatch.setattr(P, "CAFFE_URL", server.url)
    monkeypatch.setitem(P.SOURCES, "torchvision:vgg11", dict(P.SOURCES["torchvision:vgg11"], file=tv_name))
    monkeypatch.setitem(P.SOURCES, "caffe:vgg16", dict(P.SOURCES["caffe:vgg16"], file=caffe_name))
    yield dict(
        server=server, root=root, ref=ref, caffe_ref=caffe_ref, hub=tmp_path / "torchhub" / "checkpoints", tmp=tmp_path
    )
    server.close()
    torch.hub.set_dir(old_hub)


def x32(n=2):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def same(a, b, x, tol=1e-5):
    with torch.no_grad():
        return (a.eval()(x) - b.eval()(x)).abs().max().item() < tol


def test_torchvision_source_downloads_once_into_torch_hub_cache(served):
    m = vggnet.create_model("vgg11", pretrained="torchvision:vgg11")
    assert same(m, served["ref"], x32())
    cfg = m.pretrained_cfg
    assert cfg["mean"] == list(P.IMAGENET_MEAN) and cfg["std"] == list(P.IMAGENET_STD)
    assert cfg["channel_order"] == "RGB" and cfg["value_range"] == [0, 1] and cfg["interpolation"] == "bilinear"
    assert cfg["classes"][:2] == ["tench", "goldfish"] and len(cfg["classes"]) == 1000
    files = [p.name for p in served["hub"].iterdir()]
    assert files == [P.SOURCES["torchvision:vgg11"]["file"]]  # nothing else (no temporary file) left
    gets = len([h for h in served["server"].hits if h.startswith("GET")])
    vggnet.create_model("vgg11", pretrained="torchvision:vgg11")
    assert len([h for h in served["server"].hits if h.startswith("GET")]) == gets  # from the cache


def test_timm_source_through_huggingface_hub(served):
    m = vggnet.create_model("vgg11", pretrained="timm:vgg11.tv_in1k")
    assert same(m, served["ref"], x32())
    assert any("/timm/vgg11.tv_in1k/resolve/main/model.safetensors" in h for h in served["server"].hits)
    assert (served["tmp"] / "hfcache").is_dir()
    assert m.pretrained_cfg["source"] == "timm:vgg11.tv_in1k"
    m2 = vggnet.create_model("vgg11", pretrained="timm:vgg11")  # short name
    assert same(m2, served["ref"], x32())


def test_url_and_local_file(served, tmp_path):
    ref = served["ref"]
    save_weights(ref, served["root"] / "ours.safetensors")
    m = vggnet.create_model("vgg11", pretrained=served["server"].url + "/ours.safetensors")
    assert same(m, ref, x32())
    assert (served["hub"] / "ours.safetensors").is_file()
    local = tmp_path / "plain.pth"
    torch.save(to_torchvision(ref), local)
    m = vggnet.create_model("vgg11", pretrained=local)
    assert same(m, ref, x32()) and m.pretrained_cfg is None  # a bare state dict has no known convention
    m = vggnet.create_model("vgg11", pretrained=local, normalize="mean:123.68,116.78,103.94")
    assert m.pretrained_cfg["mean"] == pytest.approx([123.68 / 255, 116.78 / 255, 103.94 / 255])


def test_new_num_classes_keeps_all_but_the_last_layer(served):
    ref = served["ref"]
    m = vggnet.create_model("vgg11", pretrained="torchvision:vgg11", num_classes=7).eval()
    assert m.num_classes == 7 and m.get_classifier().out_features == 7
    own, theirs = m.state_dict(), ref.state_dict()
    for k in own:
        if k.startswith("classifier.6."):
            assert own[k].shape != theirs[k].shape
        else:
            assert torch.equal(own[k], theirs[k]), k
    assert m.pretrained_cfg["classes"] is None and m.pretrained_cfg["num_classes"] == 7
    x = x32()
    with torch.no_grad():
        assert torch.allclose(
            m.forward_head(m.forward_features(x), pre_logits=True),
            ref.forward_head(ref.forward_features(x), pre_logits=True),
        )
    m.reset_classifier(3)
    assert m(x).shape == (2, 3) and m.arch["num_classes"] == 3


def test_hash_mismatch_keeps_nothing(served, monkeypatch):
    bad = served["root"] / "vgg11-deadbeef.pth"
    torch.save(to_torchvision(served["ref"]), bad)
    monkeypatch.setitem(P.SOURCES, "torchvision:vgg11", dict(P.SOURCES["torchvision:vgg11"], file=bad.name))
    with pytest.raises(P.WeightsError, match="sha256") as e:
        vggnet.create_model("vgg11", pretrained="torchvision:vgg11")
    assert "\n" not in str(e.value) and str(served["hub"] / bad.name) in str(e.value)
    assert not served["hub"].exists() or not list(served["hub"].iterdir())


def test_truncated_download_is_removed(served):
    data = (served["root"] / P.SOURCES["torchvision:vgg11"]["file"]).read_bytes()
    (served["root"] / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(P.WeightsError, match="truncated"):
        vggnet.create_model("vgg11", pretrained=served["server"].url + "/cut.pth")
    assert not (served["hub"] / "cut.pth").exists()


def test_offline_and_failed_downloads_name_url_and_place(served, monkeypatch):
    served["server"].close()  # nothing listens any more: a failed download
    with pytest.raises(P.WeightsError) as e:
        vggnet.create_model("vgg11", pretrained="torchvision:vgg11")
    msg = str(e.value)
    path = served["hub"] / P.SOURCES["torchvision:vgg11"]["file"]
    assert "\n" not in msg and P.source_url("torchvision:vgg11") in msg and str(path) in msg
    monkeypatch.setenv("VGGNET_OFFLINE", "1")
    with pytest.raises(P.WeightsError, match="offline"):
        vggnet.create_model("vgg11", pretrained="torchvision:vgg11")
    with pytest.raises(P.WeightsError) as e:
        vggnet.create_model("vgg11", pretrained="timm:vgg11.tv_in1k")
    fallback = P.local_path("timm:vgg11.tv_in1k")
    assert "resolve/main/model.safetensors" in str(e.value) and str(fallback) in str(e.value)
    # the file placed where the message says is used, offline
    fallback.parent.mkdir(parents=True, exist_ok=True)
    (served["root"] / "hub/timm/vgg11.tv_in1k/model.safetensors").rename(fallback)
    assert same(vggnet.create_model("vgg11", pretrained="timm:vgg11.tv_in1k"), served["ref"], x32())


def test_bad_specs_and_layouts(tmp_path):
    with pytest.raises(P.WeightsError, match="unknown weights source 'foo:vgg16'"):
        vggnet.create_model("vgg16", pretrained="foo:vgg16")
    with pytest.raises(P.WeightsError, match="no such file"):
        vggnet.create_model("vgg16", pretrained=tmp_path / "missing.pth")
    f = tmp_path / "vgg13.pth"
    torch.save(to_torchvision(tiny("vgg13")), f)
    with pytest.raises(ValueError, match=r"first (missing|unexpected) key features\.\d+\.weight"):
        vggnet.create_model("vgg11", pretrained=f)
    m = vggnet.create_model(None, pretrained=f)  # the config is read off the file
    assert m.arch["config"] == "B"
    (tmp_path / "junk.pth").write_bytes(b"\x80garbage")
    with pytest.raises(ValueError, match="junk.pth"):
        vggnet.create_model("vgg11", pretrained=tmp_path / "junk.pth")


def test_caffe_fold_equals_the_bgr_0_255_pipeline(tmp_path):
    """A Caffe-layout state dict (conv1_1 ... fc8, fc6 stored as a conv) folded into conv1 gives the outputs of
    the original pipeline: BGR pixels on [0, 255] minus the mean BGR, into the unfolded weights."""
    ref = tiny("vgg16", seed=5)
    names = [n for n in ref.layer_names if n.startswith(("conv", "fc"))]
    modules = [
        m for m in list(ref.features) + list(ref.classifier) if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    caffe = {}
    for n, m in zip(names, modules):
        w = m.weight.detach().clone()
        if n == "fc6":  # as a 1x1-map conv, like a fully convolutional conversion
            w = w.view(w.shape[0], ref.feature_channels, ref.positions, ref.positions)
        caffe[f"{n}.weight"], caffe[f"{n}.bias"] = w, m.bias.detach().clone()
    path = tmp_path / "caffe_vgg16.pth"
    torch.save(caffe, path)
    folded = vggnet.create_model(None, pretrained=path, normalize="caffe")
    assert folded.arch["config"] == "D" and "folded into conv1" in folded.pretrained_cfg["original"]
    rgb = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # RGB on [0, 1]
    bgr255 = rgb.flip(1) * 255 - torch.tensor(P.CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    cfg = folded.pretrained_cfg
    ours = (rgb - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        want, got = ref(bgr255), folded.eval()(ours)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    # and the same through the transform the weights declare
    t = vggnet.transforms(folded)
    norm = [s for s in t.transforms if type(s).__name__ == "Normalize"][0]
    assert norm.mean == cfg["mean"] and norm.std == [1.0, 1.0, 1.0]


def test_caffe_source_is_folded(served):
    m = vggnet.create_model("vgg16", pretrained="caffe:vgg16")
    ref = served["caffe_ref"]
    assert torch.allclose(m.features[0].weight, ref.features[0].weight.flip(1) * 255)
    assert torch.equal(m.features[2].weight, ref.features[2].weight)
    assert m.pretrained_cfg["mean"] == pytest.approx([123.68 / 255, 116.779 / 255, 103.939 / 255], abs=1e-6)
    # the head, from the file's classifier.1 / .4 / .6, is where ours has it (0 / 3 / 6)
    for ours in (0, 3, 6):
        assert torch.equal(m.classifier[ours].weight, ref.classifier[ours].weight)
    # the same layout as a local file, and fine-tuning from it (train --init-from)
    assert "classifier.1.weight" in torch.load(P.local_path("caffe:vgg16"), weights_only=True)
    fresh = tiny("vgg16", num_classes=5, seed=2)
    P.init_from_pretrained(fresh, P.local_path("caffe:vgg16"))
    assert torch.equal(fresh.classifier[3].weight, ref.classifier[3].weight)


def test_transforms_follow_the_weights_and_refuse_unknown():
    m = tiny()
    with pytest.raises(P.WeightsError, match=r"--normalize imagenet\|caffe\|mean:R,G,B"):
        vggnet.transforms(m)
    m.pretrained_cfg = P.normalization_cfg("imagenet", crop=32)[0]
    t = vggnet.transforms(m)
    out = t(torch.randint(0, 256, (3, 50, 60), dtype=torch.uint8))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    with pytest.raises(P.WeightsError, match="unknown normalisation"):
        P.normalization_cfg("bgr")


def test_saved_weights_carry_their_convention(tmp_path):
    m = tiny()
    m.pretrained_cfg = P.normalization_cfg("imagenet", crop=32)[0]
    save_weights(m, tmp_path / "w.safetensors")
    back = vggnet.create_model("vgg11", pretrained=tmp_path / "w.safetensors")
    assert back.pretrained_cfg["std"] == list(P.IMAGENET_STD)
    assert vggnet.load_model(tmp_path / "w.safetensors").pretrained_cfg["mean"] == list(P.IMAGENET_MEAN)


def test_imagenet_class_names_ship_with_the_package():
    import torchvision

    names = P.imagenet_classes()
    assert names == torchvision.models.VGG16_Weights.IMAGENET1K_V1.meta["categories"]


def test_features_only_with_pretrained_never_builds_fc(served):
    f = vggnet.create_model("vgg11", pretrained="torchvision:vgg11", features_only=True, out_indices=(1, 3))
    assert not any(isinstance(m, torch.nn.Linear) for m in f.modules())
    x = x32()
    with torch.no_grad():
        maps = f(x)
        want = served["ref"].forward_intermediates(x, ["relu2_1", "relu4_2"])
    assert [m.shape[1] for m in maps] == f.feature_info.channels()
    assert all(torch.equal(a, b) for a, b in zip(maps, want.values()))


def test_hubconf_from_a_local_clone():
    repo = Path(__file__).resolve().parents[1]
    m = torch.hub.load(str(repo), "vgg16", source="local", num_classes=5, **TINY)
    assert isinstance(m, vggnet.VGG) and m.arch["config"] == "D" and m.num_classes == 5


def test_pretrained_true_takes_the_default_released_weights(served):
    """timm's habit: pretrained=True is torchvision's weights for A, B, D, E (and _bn); A-LRN and C say where to go."""
    from vggnet.factory import default_weights

    assert default_weights("vgg11") == "torchvision:vgg11" and default_weights("E-BN") == "torchvision:vgg19_bn"
    m = vggnet.create_model("vgg11", pretrained=True)
    assert m.pretrained_cfg["source"] == "torchvision:vgg11"
    assert torch.equal(m.features[0].weight, served["ref"].features[0].weight)
    for name in ("A-LRN", "vgg16_c"):
        with pytest.raises(P.WeightsError, match="no released weights.*caffe:vgg16"):
            vggnet.create_model(name, pretrained=True)
    assert vggnet.list_models(pretrained=True) == [
        "vgg11",
        "vgg11_bn",
        "vgg13",
        "vgg13_bn",
        "vgg16",
        "vgg16_bn",
        "vgg19",
        "vgg19_bn",
    ]
    assert {"vgg11_lrn", "vgg16_c", "B-5x5"} <= set(vggnet.list_models())
