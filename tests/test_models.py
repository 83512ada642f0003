import pytest
import torch

from selfsup.errors import SelfSupError
from selfsup.models import MLP, build_backbone


@pytest.mark.parametrize("arch,dim", [("resnet18", 128), ("resnet34", 128), ("resnet50", 512)])
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_backbones_shapes(arch, dim, stem):
    net = build_backbone(arch, stem, width=0.25)
    assert net.out_dim == dim
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, dim)
    fmap = net.forward_features(torch.randn(2, 3, 32, 32))
    assert fmap.shape[-1] == (4 if stem == "cifar" else 1)


def test_full_width_resnet50_matches_torchvision_parameter_count_and_names():
    net = build_backbone("resnet50", "imagenet", 1.0)
    # torchvision's resnet50 has 25,557,032 parameters, of which fc holds 2048*1000+1000.
    assert sum(p.numel() for p in net.parameters()) == 25_557_032 - 2_049_000
    keys = net.state_dict().keys()
    for k in ["conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer4.2.bn3.weight"]:
        assert k in keys


def test_channels_last_gives_same_output():
    net = build_backbone("resnet18", "cifar", 0.25).eval()
    x = torch.randn(2, 3, 16, 16)
    ref = net(x)
    out = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert torch.allclose(ref, out, atol=1e-5)


def test_bad_backbone_settings():
    with pytest.raises(SelfSupError, match="unknown backbone"):
        build_backbone("resnet101")
    with pytest.raises(SelfSupError, match="width"):
        build_backbone("resnet18", width=0)


def test_mlp_layers():
    m = MLP(16, 32, 8, layers=3, last_bn=True)
    assert m(torch.randn(4, 16)).shape == (4, 8)
    assert sum(isinstance(x, torch.nn.Linear) for x in m.modules()) == 3


_CL_BACKWARD = """
import copy, torch
from selfsup.models import build_backbone
torch.manual_seed(0)
net = build_backbone("resnet18", "cifar", 0.125)  # 8 channels into layer2's 1x1 stride-2 shortcut
ref = copy.deepcopy(net)
net = net.to(memory_format=torch.channels_last)
for _ in range(3):
    x = torch.randn(16, 3, 48, 48)
    net(x.contiguous(memory_format=torch.channels_last)).square().sum().backward()
    ref(x).square().sum().backward()
for (name, a), b in zip(net.named_parameters(), ref.parameters()):
    assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-4), name
print("same gradients")
"""


def test_channels_last_backward_of_the_strided_shortcut_runs_and_matches():
    """PyTorch 2.13's CPU fp32 weight gradient of a 1x1 stride-2 conv on channels_last input with <= 8
    input channels at >= 48 px segfaults; the shortcut slices first (run in a child so that a crash
    fails this test instead of killing the suite)."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", _CL_BACKWARD], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "same gradients" in r.stdout, (r.returncode, r.stderr[-2000:])


def test_zero_init_residual_is_a_model_option():
    from selfsup.config import load_config
    from selfsup.train.pretrain import build_method

    for flag, expected in (("true", 0.0), ("false", 1.0)):
        cfg = load_config("simclr", [f"model.zero_init_residual={flag}", "model.width=0.125"])
        backbone = build_method(cfg, 10).backbone
        last_bns = [block.bn2.weight for stage in (backbone.layer1, backbone.layer4) for block in stage]
        assert all(torch.all(w == expected) for w in last_bns)
        assert torch.all(backbone.bn1.weight == 1.0)  # the stem's BN is never zeroed
