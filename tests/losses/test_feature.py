from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kd_probe.core.kd.feature import at, fitnets, nst, vid
from kd_probe.losses._base import DistillationLoss
from kd_probe.losses.feature import AT, NST, VID, FitNets


@pytest.mark.parametrize(
    ("loss", "hyperparameters", "weight"),
    [
        (FitNets(), {}, 1.0),  # the authors' hint stage: the hint loss alone, unweighted
        (AT(), {"beta": 1000.0, "p": 2.0}, 1.0),  # szagoruyko/attention-transfer: β = 1e3, p = 2
        (NST(), {"d": 2, "c": 0.0}, 50.0),  # the paper's polynomial kernel; TuSimple's kt_weight = 50
        (VID(), {"initial_variance": 5.0, "eps": 1e-5}, 1.0),  # the authors' init_pred_var and eps
    ],
)
def test_defaults_are_the_papers(loss: DistillationLoss, hyperparameters: dict, weight: float) -> None:
    assert loss.kind == "feature" and isinstance(loss, nn.Module)
    assert loss.hyperparameters() == hyperparameters and loss.weight == weight
    assert loss.student_layers is None and not loss.built


def test_at_and_nst_forward_equal_their_functionals_and_need_no_build() -> None:
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 5, 2, 2, generator=g)]
    t = [torch.randn(2, 6, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)]
    torch.testing.assert_close(AT(beta=10.0, p=1.0)(s, t), at(s, t, beta=10.0, p=1.0))
    torch.testing.assert_close(NST(d=3, c=0.5)(s, t), nst(s, t, d=3, c=0.5))
    torch.testing.assert_close(AT()(s[0], t[0]), at([s[0]], [t[0]]))  # a single tensor is one pair
    assert list(AT().state_dict()) == list(NST().state_dict()) == []


def test_fitnets_builds_one_regressor_per_pair() -> None:
    loss = FitNets(student_layers=["a", "b", "c", "d"], teacher_layers=["w", "x", "y", "z"])
    student = [torch.randn(2, 3, 4, 4), torch.randn(2, 6), torch.randn(2, 3, 2, 2), torch.randn(2, 3, 4, 4)]
    teacher = [torch.randn(2, 5, 4, 4), torch.randn(2, 8), torch.randn(2, 3, 2, 2), torch.randn(2, 5, 2, 2)]
    loss.build(student, teacher)
    kinds = [type(r) for r in loss.regressors]
    assert kinds == [nn.Conv2d, nn.Linear, nn.Identity, nn.Conv2d]  # same shapes: no regressor
    expected_keys = ["regressors.0.weight", "regressors.1.bias", "regressors.1.weight", "regressors.3.weight"]
    assert sorted(loss.state_dict()) == expected_keys
    regressed = [
        loss.regressors[0](student[0]),
        loss.regressors[1](student[1]),
        student[2],
        loss.regressors[3](F.adaptive_avg_pool2d(student[3], 2)),  # the larger (student) map is pooled first
    ]
    torch.testing.assert_close(loss(student, teacher), fitnets(regressed, teacher))


def test_fitnets_pools_a_larger_teacher_map_and_equals_the_mse_with_an_identity_regressor() -> None:
    loss = FitNets()
    student, teacher = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]), torch.ones(1, 1, 4, 4)
    loss.build(student, teacher)
    assert isinstance(loss.regressors[0], nn.Identity)
    assert float(loss(student, teacher)) == pytest.approx(3.5)  # teacher pooled to ones(2, 2): (0 + 1 + 4 + 9) / 4


@pytest.mark.parametrize("loss", [FitNets(), VID()], ids=["FitNets", "VID"])
def test_learnable_parts_are_parameters_that_receive_gradients(loss: DistillationLoss) -> None:
    student = torch.randn(4, 3, 4, 4, requires_grad=True)
    teacher = torch.randn(4, 6, 4, 4, requires_grad=True)
    with pytest.raises(ValueError, match=r"call `build\(student_features, teacher_features\)` on one example"):
        loss(student, teacher)
    loss.build([student], [teacher])
    parameters = dict(loss.named_parameters())
    assert parameters and set(parameters) <= set(loss.state_dict())
    loss(student, teacher).backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in parameters.values())
    assert student.grad is not None and teacher.grad is None
    with pytest.raises(ValueError, match=r"was built for 1 layer pairs, got 2"):
        loss([student, student], [teacher, teacher])


def test_vid_builds_the_regressor_and_the_variances() -> None:
    loss = VID(initial_variance=2.0, eps=1e-3)
    student, teacher = [torch.randn(2, 3, 8, 8), torch.randn(2, 5)], [torch.randn(2, 4, 4, 4), torch.randn(2, 7)]
    loss.build(student, teacher)
    maps, vectors = list(loss.regressors[0].children()), list(loss.regressors[1].children())
    convs = [m for m in maps if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.bias) for m in convs] == [
        (3, 4, (1, 1), None),
        (4, 4, (1, 1), None),
        (4, 4, (1, 1), None),
    ]
    assert [type(m) for m in maps] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.Conv2d]
    assert [(m.in_features, m.out_features) for m in vectors if isinstance(m, nn.Linear)] == [
        (5, 7),
        (7, 7),
        (7, 7),
    ]
    assert {"alpha.0", "alpha.1", "regressors.0.0.weight", "regressors.1.4.weight"} <= set(loss.state_dict())
    for alpha, channels in zip(loss.alpha, (4, 7), strict=True):  # σ² = softplus(α) + ε starts at 2
        torch.testing.assert_close(F.softplus(alpha.detach()) + 1e-3, torch.full((channels,), 2.0))
    means = [loss.regressors[0](F.adaptive_avg_pool2d(student[0], 4)), loss.regressors[1](student[1])]
    torch.testing.assert_close(loss(student, teacher), vid(means, teacher, list(loss.alpha), eps=1e-3))


def test_vid_learns_the_teachers_feature() -> None:
    torch.manual_seed(0)
    student = torch.randn(16, 3, 2, 2)
    teacher = 2.0 * student[:, :2].relu()  # a function of the student's feature the regressor can learn
    loss = VID()
    loss.build(student, teacher)
    optimiser = torch.optim.Adam(loss.parameters(), lr=0.1)

    def residual() -> float:
        return float((loss.regressors[0](student) - teacher).pow(2).mean().detach())

    start, start_residual = float(loss(student, teacher).detach()), residual()  # ≈ ½ log 5: σ² starts at 5
    for _ in range(25):
        optimiser.zero_grad()
        loss(student, teacher).backward()
        optimiser.step()
    assert float(loss(student, teacher).detach()) < 0.8 * start
    assert residual() < 0.5 * start_residual  # the mean moves towards the teacher
    assert float(F.softplus(loss.alpha[0].detach()).max()) < 4.0  # and the variance shrinks from 5


@pytest.mark.parametrize("loss", [AT(), NST(student_layers="layer1")], ids=["AT", "NST"])
def test_at_and_nst_refuse_vectors_at_build(loss: DistillationLoss) -> None:
    with pytest.raises(ValueError, match=r"compares feature maps \[B, C, H, W\], but pair .* student \(2, 8\)"):
        loss.build([torch.zeros(2, 8)], [torch.zeros(2, 8)])
    loss.build([torch.zeros(2, 3, 4, 4)], [torch.zeros(2, 5, 2, 2)])
    assert loss.built


def test_features_that_cannot_be_regressed_are_refused_naming_the_layers() -> None:
    with pytest.raises(ValueError, match=r"feature pair 'a' -> 'b' cannot be adapted: student \(2, 3, 4, 4\)"):
        FitNets(student_layers="a", teacher_layers="b").build(torch.zeros(2, 3, 4, 4), torch.zeros(2, 8))
    with pytest.raises(ValueError, match=r"VID's feature pair #0 must be two maps .* got student \(2, 3, 4\)"):
        VID().build(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))


def test_the_built_parts_follow_the_features_dtype() -> None:
    loss = VID()
    loss.build(torch.zeros(1, 2, 2, 2, dtype=torch.float64), torch.zeros(1, 3, 2, 2, dtype=torch.float64))
    assert {p.dtype for p in loss.parameters()} == {torch.float64}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: AT(beta=0.0), r"`beta` must be a finite number > 0, got 0\.0\."),
        (lambda: AT(p=-2), r"`p` must be a finite number > 0, got -2\."),
        (lambda: NST(d=_as_any(2.0)), r"`d` \(the polynomial kernel's degree\) must be an integer ≥ 1, got 2\.0\."),
        (lambda: NST(c=-0.5), r"`c` must be a finite number ≥ 0, got -0\.5\."),
        (lambda: VID(eps=0), r"`eps` must be a finite number > 0, got 0\."),
        (lambda: VID(initial_variance=1e-6), r"`initial_variance` must be > `eps` \(1e-05\), got 1e-06\."),
        (lambda: VID(initial_variance=float("nan")), r"`initial_variance` must be a finite number > 0, got nan\."),
        (lambda: FitNets(weight=-1.0), r"`weight` must be a finite number ≥ 0, got -1\.0\."),
    ],
)
def test_a_bad_hyperparameter_is_refused_in_init(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def _as_any(value: Any) -> Any:
    """A value of the wrong type, passed on purpose."""
    return value
