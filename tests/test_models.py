import pytest
import torch

from advtui.engine.models import build_model, count_parameters
from advtui.errors import ConfigError


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
