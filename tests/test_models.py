import pytest
import torch

from advtui.engine.models import build_model, count_parameters
from advtui.core.errors import ConfigError


@pytest.mark.parametrize("name, dataset, params", [
    ("smallcnn", "mnist", 312_202),  # conv 32,32,64,64 + fc 1024-200-200-10 (TRADES' SmallCNN)
    ("resnet18", "cifar10", 11_173_962),
    ("wrn-34-10", "cifar10", 46_160_474),  # the WideResNet-34-10 of Madry et al. and TRADES
    ("wrn-16-2", "cifar10", 691_674),
])
def test_parameter_counts(name, dataset, params):
    assert count_parameters(build_model(name, dataset)) == params


@pytest.mark.parametrize("name, dataset", [("smallcnn", "mnist"), ("vgg16", "cifar10"), ("resnet18", "cifar10"),
                                           ("wrn-10-1", "cifar10"), ("smallcnn", "cifar10")])
def test_forward_shapes(name, dataset):
    shape = (2, 1, 28, 28) if dataset == "mnist" else (2, 3, 32, 32)
    model = build_model(name, dataset).eval()
    assert model(torch.rand(shape)).shape == (2, 10)


def test_cifar_models_normalize_inside():
    model = build_model("vgg16", "cifar10")
    assert type(model[0]).__name__ == "Normalize"


def test_unknown_model():
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("alexnet", "mnist")


# -- initialization as in each model's reference code --------------------------------------------
def _convs(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def _fan_in(conv):
    return conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]


def _fan_out(conv):
    return conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]


def _excess_kurtosis(w: torch.Tensor) -> float:
    w = w.detach().flatten().double()
    z = (w - w.mean()) / w.std()
    return float((z ** 4).mean() - 3)  # 0 for a normal, -1.2 for a uniform


def test_smallcnn_init_matches_trades():
    """TRADES models/small_cnn.py: kaiming_normal_ conv weights (fan-in, gain sqrt 2), zero conv
    biases, a zero last layer."""
    torch.manual_seed(0)
    model = build_model("smallcnn", "mnist")
    last = model.classifier[-1]
    assert torch.count_nonzero(last.weight) == 0 and torch.count_nonzero(last.bias) == 0
    convs = _convs(model)
    assert len(convs) == 4
    for conv in convs:
        assert torch.count_nonzero(conv.bias) == 0
        expected = (2.0 / _fan_in(conv)) ** 0.5
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.12)
        assert abs(conv.weight.mean().item()) < 0.1 * expected
    # Normal, not uniform, where a layer is big enough to tell (PyTorch's default is uniform).
    assert abs(_excess_kurtosis(convs[3].weight)) < 0.3
    # The hidden linear layers keep PyTorch's default, as in the reference.
    fc1 = model.classifier[0]
    assert fc1.weight.abs().max().item() <= 1 / fc1.in_features ** 0.5 + 1e-6


def test_wideresnet_init_matches_trades():
    """TRADES models/wideresnet.py: conv weights N(0, 2 / (k*k*out_channels)), batch norm 1 / 0,
    zero linear bias."""
    torch.manual_seed(0)
    model = build_model("wrn-16-2", "cifar10")
    for conv in _convs(model):
        expected = (2.0 / _fan_out(conv)) ** 0.5
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.15), conv
    biggest = max(_convs(model), key=lambda c: c.weight.numel())
    assert abs(_excess_kurtosis(biggest.weight)) < 0.3
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    fc = model[1].fc
    assert torch.count_nonzero(fc.bias) == 0 and torch.count_nonzero(fc.weight) > 0


@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
def test_vgg_and_resnet_keep_pytorch_default_init(name):
    """BayesianDefense's VGG and kuangliu's ResNet set no init of their own: Kaiming-uniform with
    a = sqrt 5, i.e. uniform in +-1/sqrt(fan_in), std 1/sqrt(3 fan_in)."""
    torch.manual_seed(0)
    model = build_model(name, "cifar10")
    for conv in _convs(model):
        bound = 1 / _fan_in(conv) ** 0.5
        assert conv.weight.abs().max().item() <= bound + 1e-6
        assert conv.weight.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.15)


@pytest.mark.parametrize("name, dataset", [("smallcnn", "mnist"), ("wrn-10-1", "cifar10")])
def test_seed_reproduces_weights(name, dataset):
    def weights(seed):
        torch.manual_seed(seed)
        return torch.cat([p.detach().flatten() for p in build_model(name, dataset).parameters()])

    assert torch.equal(weights(3), weights(3))
    assert not torch.equal(weights(3), weights(4))
