"""Chain-distillation loss: zero at agreement, positive otherwise, the right gradient, the right mix."""

import pytest
import torch
import torch.nn.functional as F

from hepc.train.distill import distill_loss, kd_loss


def _logits(seed, shape=(2, 5, 11)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("temperature", [1.0, 1.2, 2.0])
def test_kd_is_zero_when_teacher_equals_student(temperature):
    z = _logits(0)
    assert kd_loss(z, z.clone(), temperature).abs().item() < 1e-6


def test_kd_is_positive_when_they_differ():
    assert kd_loss(_logits(0), _logits(1), 1.2).item() > 1e-3


def test_kd_matches_explicit_formula():
    s, t, T = _logits(0), _logits(1), 1.2
    p = F.softmax(t / T, -1)
    expected = T**2 * (p * (F.log_softmax(t / T, -1) - F.log_softmax(s / T, -1))).sum(-1).mean()
    assert kd_loss(s, t, T).item() == pytest.approx(expected.item(), rel=1e-5)


def test_kd_gradient_matches_manual_formula():
    # d/ds of T²·mean_n KL(p‖softmax(s/T)) = T·(q − p)/N per token row
    s, t, T = _logits(0).requires_grad_(True), _logits(1), 1.2
    kd_loss(s, t, T).backward()
    N = s.numel() // s.size(-1)
    expected = T * (F.softmax(s.detach() / T, -1) - F.softmax(t / T, -1)) / N
    torch.testing.assert_close(s.grad, expected, rtol=1e-5, atol=1e-7)


def test_kd_does_not_backprop_into_teacher():
    s, t = _logits(0).requires_grad_(True), _logits(1).requires_grad_(True)
    kd_loss(s, t, 1.2).backward()
    assert t.grad is None


def test_distill_loss_mixes_ce_and_kd():
    s, t = _logits(0), _logits(1)
    y = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(2))
    loss, ce, kd = distill_loss(s, t, y, alpha=0.45, temperature=1.2)
    assert ce.item() == pytest.approx(F.cross_entropy(s.view(-1, 11), y.view(-1)).item())
    assert kd.item() == pytest.approx(kd_loss(s, t, 1.2).item())
    assert loss.item() == pytest.approx(0.55 * ce.item() + 0.45 * kd.item())
    loss0, ce0, _ = distill_loss(s, t, y, alpha=0.0, temperature=1.2)
    assert loss0.item() == pytest.approx(ce0.item())
