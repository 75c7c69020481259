import os

import pytest
import torch
from PIL import Image

# Two CPU cores on CI: keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _float32_on_cpu(monkeypatch):
    """Evaluation on the CPU in float32 unless a test asks for bf16: on a CPU with native bf16 it would default to
    bf16 (vggnet.runtime), and the tests' exact comparisons must not depend on the machine they run on."""
    monkeypatch.setenv("VGGNET_CPU_BF16", "0")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of small coloured images with noise: learnable, not trivial (the training and fault tests)."""
    root = tmp_path_factory.mktemp("imgs")
    g = torch.Generator().manual_seed(0)
    for c, colour in enumerate([(200, 60, 60), (60, 60, 200)]):
        (root / f"class{c}").mkdir()
        for i in range(20):
            base = torch.tensor(colour, dtype=torch.float32)[:, None, None]
            img = (base + 60 * torch.randn(3, 40, 48, generator=g)).clamp(0, 255).byte()
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(root / f"class{c}" / f"{i}.png")
    return root
