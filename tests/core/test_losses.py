import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kd_probe.functional import feature_distillation_loss, logit_distillation_loss


def _reference_kd(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
    """T² · mean over the batch of Σ_k p_t (log p_t − log p_s), written out in float64 numpy."""

    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z / temperature
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    log_ps, log_pt = log_softmax(student), log_softmax(teacher)
    kl_per_sample = (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=1)
    return float(temperature**2 * kl_per_sample.mean())


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 8.0])
def test_logit_kd_matches_an_independent_computation(temperature: float) -> None:
    g = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(16, 10, generator=g) * 3, torch.randn(16, 10, generator=g) * 3
    expected = _reference_kd(student.double().numpy(), teacher.double().numpy(), temperature)
    assert float(logit_distillation_loss(student, teacher, temperature)) == pytest.approx(expected, rel=1e-5)


def test_logit_kd_equals_the_torchdistill_formulation() -> None:
    # torchdistill's KDLoss / mdistiller's kd_loss: KLDivLoss(batchmean)(log_softmax(s/T), softmax(t/T)) · T²
    student, teacher = torch.randn(8, 5), torch.randn(8, 5)
    expected = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(student / 3, 1), F.softmax(teacher / 3, 1)) * 9
    torch.testing.assert_close(logit_distillation_loss(student, teacher, 3.0), expected)


def test_logit_kd_is_zero_for_identical_logits_and_positive_otherwise() -> None:
    logits = torch.randn(4, 6)
    assert float(logit_distillation_loss(logits, logits.clone())) == pytest.approx(0.0, abs=1e-6)
    assert float(logit_distillation_loss(logits, torch.randn(4, 6))) > 0


def test_logit_kd_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match=r"`temperature` must be > 0, got 0"):
        logit_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0)
    with pytest.raises(ValueError, match=r"`student_logits` \(2, 3\) and `teacher_logits` \(2, 4\)"):
        logit_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_feature_loss_is_the_mean_squared_error() -> None:
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert float(feature_distillation_loss(a, b)) == pytest.approx(float(((a - b) ** 2).mean()), rel=1e-6)
    with pytest.raises(ValueError, match=r"`student_feature` \(2, 3, 4, 4\) and `teacher_feature` \(2, 5, 4, 4\)"):
        feature_distillation_loss(a, torch.zeros(2, 5, 4, 4))
