"""Working copies: same function as the user's model, the user's model untouched."""

import torch
from torch import nn

from viscnn.model_copy import working_copy
from viscnn.zoo.fmnist import FashionCNN


def test_channels_last_copy_computes_the_same_and_leaves_the_model_alone():
    torch.manual_seed(0)
    m = FashionCNN(widths=(4, 4, 6, 6)).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    c = working_copy(m, channels_last=True)
    assert m.training and not c.training
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    assert m.conv2.weight.is_contiguous() and c.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(p.requires_grad for p in c.parameters()) and all(p.requires_grad for p in m.parameters())
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(c(x), m.eval()(x), atol=1e-5, rtol=1e-5)


def test_channels_last_copy_keeps_5d_weights_as_they_are():
    m = nn.Sequential(nn.Conv3d(1, 2, 3), nn.Flatten(), nn.LazyLinear(2))
    m(torch.rand(1, 1, 4, 4, 4))
    c = working_copy(m, channels_last=True)  # no error on the 5D weight
    assert c[0].weight.shape == (2, 1, 3, 3, 3)
    x = torch.rand(1, 1, 4, 4, 4)
    torch.testing.assert_close(c(x), m(x))
