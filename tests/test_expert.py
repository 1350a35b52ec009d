"""Expert: the bias-free SwiGLU FFN w2(silu(w1 x) * w3 x)."""

import torch
import torch.nn.functional as F

from components.expert import Expert


def test_shapes_any_leading_dims():
    torch.manual_seed(0)
    expert = Expert(d_model=16, hidden_dim=24)
    assert expert(torch.randn(3, 16)).shape == (3, 16)
    assert expert(torch.randn(2, 5, 16)).shape == (2, 5, 16)
    assert expert.w_gate.weight.shape == (24, 16)
    assert expert.w_up.weight.shape == (24, 16)
    assert expert.w_down.weight.shape == (16, 24)


def test_equals_hand_written_swiglu():
    torch.manual_seed(0)
    expert = Expert(d_model=8, hidden_dim=12)
    x = torch.randn(4, 8)
    w1, w3, w2 = expert.w_gate.weight, expert.w_up.weight, expert.w_down.weight
    gate = x @ w1.T
    expected = (gate * torch.sigmoid(gate) * (x @ w3.T)) @ w2.T
    torch.testing.assert_close(expert(x), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(expert(x), F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2),
                               atol=1e-6, rtol=1e-5)


def test_no_biases_and_gradients():
    expert = Expert(d_model=8, hidden_dim=12)
    assert all(layer.bias is None for layer in (expert.w_gate, expert.w_up, expert.w_down))
    assert sum(p.numel() for p in expert.parameters()) == 3 * 8 * 12
    expert(torch.randn(5, 8)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in expert.parameters())
