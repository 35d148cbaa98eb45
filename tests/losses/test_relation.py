import pytest
import torch

from kd_probe.core.kd.relation import cc, pkt, rkd, sp
from kd_probe.losses._base import DistillationLoss
from kd_probe.losses.relation import CC, PKT, RKD, SP

CLASSES = [(SP, sp), (PKT, pkt), (RKD, rkd), (CC, cc)]


def test_defaults_are_the_papers() -> None:
    # SP: Tung & Mori's γ = 3000; PKT: the authors' ε = 1e-7; RKD: the authors' CIFAR λ_D = 25, λ_A = 50;
    # CC: γ = 0.4, P = 2 (Knowledge-Distillation-Zoo's setting of the paper's kernel)
    assert SP().hyperparameters() == {"gamma": 3000.0}
    assert PKT().hyperparameters() == {"eps": 1e-7}
    assert RKD().hyperparameters() == {"distance_weight": 25.0, "angle_weight": 50.0}
    assert CC().hyperparameters() == {"gamma": 0.4, "order": 2}
    for cls, _ in CLASSES:
        loss = cls()
        assert isinstance(loss, DistillationLoss) and loss.kind == "feature" and not loss.needs_indices
        # layers None: the embedding (input of the last nn.Linear) of each network
        assert loss.weight == 1.0 and loss.student_layers is None and loss.teacher_layers is None
    assert "gamma=3000.0" in repr(SP()) and "angle_weight=50.0" in repr(RKD())


@pytest.mark.parametrize(("cls", "functional"), CLASSES)
def test_forward_is_the_functional_summed_over_layer_pairs(cls: type[DistillationLoss], functional) -> None:
    g = torch.Generator().manual_seed(0)
    students = [torch.randn(5, 8, generator=g), torch.randn(5, 3, 4, 4, generator=g)]
    teachers = [torch.randn(5, 12, generator=g), torch.randn(5, 6, 2, 2, generator=g)]
    loss = cls(student_layers=["fc_in", "layer2"], teacher_layers=["head_in", "layer3"])
    torch.testing.assert_close(loss(students[0], teachers[0]), functional(students[0], teachers[0]))
    expected = functional(students[0], teachers[0]) + functional(students[1], teachers[1])
    torch.testing.assert_close(loss(students, teachers), expected)
    # labels and indices are accepted and unused
    torch.testing.assert_close(loss(students, teachers, labels=torch.arange(5), indices=torch.arange(5)), expected)


def test_non_default_settings_reach_the_functional() -> None:
    s, t = torch.randn(4, 6), torch.randn(4, 3)
    torch.testing.assert_close(SP(gamma=1.0)(s, t), sp(s, t, gamma=1.0))
    torch.testing.assert_close(PKT(eps=1e-5)(s, t), pkt(s, t, eps=1e-5))
    torch.testing.assert_close(RKD(1.0, 2.0)(s, t), rkd(s, t, distance_weight=1.0, angle_weight=2.0))
    torch.testing.assert_close(CC(gamma=1.0, order=3)(s, t), cc(s, t, gamma=1.0, order=3))


@pytest.mark.parametrize(("cls", "functional"), CLASSES)
def test_no_learnable_parts_and_no_build_needed(cls: type[DistillationLoss], functional) -> None:
    loss = cls()
    assert list(loss.parameters()) == [] and list(loss.buffers()) == [] and loss.state_dict() == {}
    assert not loss.built
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 7, requires_grad=True)
    loss(student, teacher).backward()  # works before build
    assert student.grad is not None and teacher.grad is None


BAD_SETTINGS = [
    (SP, {"gamma": 0.0}, r"`gamma` must be a finite number > 0, got 0\.0\."),
    (SP, {"weight": -1.0}, r"`weight` must be a finite number ≥ 0, got -1\.0\."),
    (PKT, {"eps": -1e-7}, r"`eps` must be a finite number > 0, got -1e-07\."),
    (RKD, {"distance_weight": float("nan")}, r"`distance_weight` must be a finite number ≥ 0, got nan\."),
    (RKD, {"angle_weight": -50}, r"`angle_weight` must be a finite number ≥ 0, got -50\."),
    (RKD, {"distance_weight": 0.0, "angle_weight": 0.0}, r"`distance_weight` and `angle_weight` are both 0; at least"),
    (CC, {"gamma": "0.4"}, r"`gamma` must be a finite number > 0, got '0\.4'\."),
    (CC, {"order": 0}, r"`order` must be an integer ≥ 1 \(the order P of the Taylor expansion\), got 0\."),
    (
        CC,
        {"student_layers": ["a", "b"], "teacher_layers": ["c"]},
        r"`student_layers` \['a', 'b'\] and `teacher_layers`",
    ),
]


@pytest.mark.parametrize(("cls", "settings", "message"), BAD_SETTINGS)
def test_bad_settings_are_refused_in_init(cls: type[DistillationLoss], settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**settings)


@pytest.mark.parametrize(("cls", "functional"), CLASSES)
def test_bad_feature_lists_are_refused_in_one_sentence(cls: type[DistillationLoss], functional) -> None:
    loss = cls()
    with pytest.raises(ValueError, match=r"`student_features` has 2 tensors and `teacher_features` 1; they must pair"):
        loss([torch.randn(3, 4), torch.randn(3, 4)], [torch.randn(3, 4)])
    with pytest.raises(
        ValueError, match=r"`teacher_features` must be a tensor or a non-empty list of tensors .*got an empty list\."
    ):
        loss([torch.randn(3, 4)], [])
    with pytest.raises(ValueError, match=r"`student` \(3, 4\) and `teacher` \(2, 4\) must hold the same number"):
        loss(torch.randn(3, 4), torch.randn(2, 4))
