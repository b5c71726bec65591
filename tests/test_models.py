"""Encoders, heads and model wrappers: shapes, depth of each arch, the projection, channels-last."""
import pytest
import torch
from torchvision.models.resnet import Bottleneck

from supcon_fast.models import ARCHS, CEModel, ResNetEncoder, SupConModel, build_model


@pytest.mark.parametrize("arch,out_dim", [("resnet18", 64), ("resnet50", 256)])
@pytest.mark.parametrize("stem,size", [("small", 16), ("imagenet", 32)])
def test_encoder_shapes(arch, out_dim, stem, size):
    enc = ResNetEncoder(arch, stem, width=8)
    assert enc.out_dim == out_dim
    assert enc(torch.randn(2, 3, size, size)).shape == (2, out_dim)


def test_block_counts_match_the_papers():
    # ResNet-200 = Bottleneck [3, 24, 36, 3]; built narrow so the test is cheap
    enc = ResNetEncoder("resnet200", "imagenet", width=4)
    counts = [len(getattr(enc, f"layer{i}")) for i in range(1, 5)]
    assert counts == [3, 24, 36, 3]
    assert all(isinstance(b, Bottleneck) for b in enc.layer3)
    assert ARCHS["resnet50"][1] == [3, 4, 6, 3]


def test_standard_resnet50_parameter_count():
    # torchvision's resnet50 has 25.557M parameters of which 2.049M are the fc layer
    n = sum(p.numel() for p in ResNetEncoder("resnet50").parameters())
    assert n == 25_557_032 - 2_049_000


def test_small_stem_keeps_resolution():
    enc = ResNetEncoder("resnet18", "small", width=8)
    assert enc.stem(torch.randn(1, 3, 16, 16)).shape[-1] == 16
    enc = ResNetEncoder("resnet18", "imagenet", width=8)
    assert enc.stem(torch.randn(1, 3, 32, 32)).shape[-1] == 8


@pytest.mark.parametrize("head", ["mlp", "linear"])
def test_supcon_model_outputs_the_projection(head):
    """The model returns the head's projection, unnormalized: the trainer normalizes it in fp32 and casts
    it to the loss dtype in one place (engine.precision.loss_features)."""
    from supcon_fast.engine.precision import loss_features
    m = build_model("resnet18", stem="small", width=8, head=head, feat_dim=16, channels_last=True)
    assert isinstance(m, SupConModel)
    x = torch.randn(4, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    z = m(x)
    assert z.shape == (4, 16)
    torch.testing.assert_close(z, m.head(m.encoder(x)))
    torch.testing.assert_close(loss_features(z, torch.float32).norm(dim=1), torch.ones(4))
    assert m.encoder.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    if head == "mlp":
        assert [l.out_features for l in m.head if isinstance(l, torch.nn.Linear)] == [64, 16]


def test_ce_model_and_bad_args():
    m = build_model("resnet18", stem="small", width=8, loss="ce", num_classes=7)
    assert isinstance(m, CEModel) and m(torch.randn(2, 3, 16, 16)).shape == (2, 7)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("resnet18", loss="ce")
    with pytest.raises(ValueError, match="arch"):
        build_model("resnet19")
    with pytest.raises(ValueError, match="stem"):
        build_model("resnet18", stem="tiny")
    with pytest.raises(ValueError, match="head"):
        build_model("resnet18", head="deep")


def test_sync_bn_conversion():
    m = build_model("resnet18", stem="small", width=8, sync_bn=True)
    assert any(isinstance(x, torch.nn.SyncBatchNorm) for x in m.modules())
    assert not any(type(x) is torch.nn.BatchNorm2d for x in m.modules())
