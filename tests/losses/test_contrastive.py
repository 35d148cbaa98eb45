"""The CRD module (methods §6.16): defaults, the functional inside, memory banks, sampling, gradients, refusals."""

import math

import pytest
import torch
import torch.nn.functional as F

from kd_probe.core.kd.contrastive import crd, crd_normalization
from kd_probe.losses._base import DistillationLoss
from kd_probe.losses.contrastive import CRD

D_S, D_T, N = 6, 10, 20


def _features(batch: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, D_S, generator=g), torch.randn(batch, D_T, generator=g)


def _built(**kwargs) -> CRD:
    loss = CRD(**{"num_samples": N, "negatives": 5, "feat_dim": 8, **kwargs})
    loss.build(*_features())
    return loss


def test_defaults_are_the_authors_cifar100_settings() -> None:
    loss = CRD()
    assert isinstance(loss, DistillationLoss) and loss.kind == "feature" and loss.needs_indices
    # RepDistiller train_student.py: --feat_dim 128, --nce_k 16384, --nce_t 0.07, --nce_m 0.5, -b 0.8
    assert loss.hyperparameters() == {
        "feat_dim": 128,
        "negatives": 16384,
        "temperature": 0.07,
        "momentum": 0.5,
        "num_samples": None,
        "seed": 0,
    }
    assert loss.weight == 0.8 and loss.student_layers is None and loss.teacher_layers is None


def test_forward_is_the_sum_of_both_directions_of_the_functional() -> None:
    loss = _built()
    student, teacher = _features()
    indices = torch.tensor([3, 0, 7, 19])
    memory_student, memory_teacher = loss.memory_student.clone(), loss.memory_teacher.clone()
    drawn: list[torch.Tensor] = []
    draw = loss._draw_negatives

    def recording_draw(indices: torch.Tensor) -> torch.Tensor:  # a spy: the rows this forward samples
        drawn.append(draw(indices))
        return drawn[-1]

    loss._draw_negatives = recording_draw  # type: ignore[method-assign]
    loss.log_normalization.copy_(torch.tensor([math.log(30.0), math.log(40.0)]))
    value = loss(student, teacher, indices=indices)

    negatives = drawn[0]
    assert negatives.shape == (4, 5)
    v_s = F.normalize(loss.embed_student(student), dim=1)
    v_t = F.normalize(loss.embed_teacher(teacher), dim=1)
    student_anchor = crd(v_s, memory_teacher[indices], memory_teacher[negatives], 30.0, N, 0.07)
    teacher_anchor = crd(v_t, memory_student[indices], memory_student[negatives], 40.0, N, 0.07)
    torch.testing.assert_close(value, student_anchor + teacher_anchor)


def test_the_constant_z_is_estimated_on_the_first_training_batch_then_kept() -> None:
    loss = _built()
    assert bool(torch.isnan(loss.log_normalization).all())
    student, teacher = _features()
    indices = torch.tensor([0, 1, 2, 3])

    loss.eval()  # an evaluation batch (e.g. Lightning's sanity check) estimates its own Z but does not keep it
    loss(student, teacher, indices=indices)
    assert bool(torch.isnan(loss.log_normalization).all())

    loss.train()
    memory_student, memory_teacher = loss.memory_student.clone(), loss.memory_teacher.clone()
    generator_state = loss._generator.get_state()
    loss(student, teacher, indices=indices)
    replay = torch.Generator()
    replay.set_state(generator_state)
    negatives = torch.randint(0, N - 1, (4, 5), generator=replay)
    negatives += (negatives >= indices[:, None]).long()
    with torch.no_grad():
        v_s = F.normalize(loss.embed_student(student), dim=1)
        v_t = F.normalize(loss.embed_teacher(teacher), dim=1)
    z_student = crd_normalization(v_s, memory_teacher[indices], memory_teacher[negatives], N, 0.07)
    z_teacher = crd_normalization(v_t, memory_student[indices], memory_student[negatives], N, 0.07)
    expected = torch.stack([z_student, z_teacher]).log().float()
    torch.testing.assert_close(loss.log_normalization, expected)

    loss(*_features(seed=5), indices=torch.tensor([4, 5, 6, 7]))
    torch.testing.assert_close(loss.log_normalization, expected)  # fixed after the first batch


def test_memory_banks_are_buffers_in_the_state_dict_and_embeddings_are_parameters() -> None:
    loss = _built()
    buffers = dict(loss.named_buffers())
    assert set(buffers) == {"memory_student", "memory_teacher", "log_normalization"}
    assert buffers["memory_student"].shape == buffers["memory_teacher"].shape == (N, 8)
    assert {name for name, _ in loss.named_parameters()} == {
        "embed_student.weight",
        "embed_student.bias",
        "embed_teacher.weight",
        "embed_teacher.bias",
    }
    assert set(loss.state_dict()) == set(buffers) | {name for name, _ in loss.named_parameters()}
    # the initial rows: uniform in ±√(3/feat_dim), unit norm on average
    assert float(loss.memory_student.abs().max()) <= math.sqrt(3 / 8)

    loss(*_features(), indices=torch.tensor([0, 1, 2, 3]))  # a training step: rows moved, Z estimated
    resumed = _built(seed=3)
    resumed.load_state_dict(loss.state_dict())
    for name, value in loss.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


def test_a_training_step_moves_the_batch_rows_with_momentum_and_no_other_row() -> None:
    loss = _built(momentum=0.25)
    student, teacher = _features()
    indices = torch.tensor([2, 9, 11, 0])
    before_student, before_teacher = loss.memory_student.clone(), loss.memory_teacher.clone()
    loss(student, teacher, indices=indices)
    with torch.no_grad():
        v_s = F.normalize(loss.embed_student(student), dim=1)
        v_t = F.normalize(loss.embed_teacher(teacher), dim=1)
    # row 9 (second in the batch): normalize(0.25 · old + 0.75 · embedding)
    expected_student = F.normalize(0.25 * before_student[9] + 0.75 * v_s[1], dim=0)
    expected_teacher = F.normalize(0.25 * before_teacher[9] + 0.75 * v_t[1], dim=0)
    torch.testing.assert_close(loss.memory_student[9], expected_student)
    torch.testing.assert_close(loss.memory_teacher[9], expected_teacher)
    assert float(loss.memory_student[9].norm()) == pytest.approx(1.0)
    others = torch.ones(N, dtype=torch.bool)
    others[indices] = False
    assert torch.equal(loss.memory_student[others], before_student[others])
    assert torch.equal(loss.memory_teacher[others], before_teacher[others])


def test_eval_mode_never_updates_the_memory_banks() -> None:
    loss = _built().eval()
    before = {name: buffer.clone() for name, buffer in loss.named_buffers()}
    for seed in range(3):
        loss(*_features(seed=seed), indices=torch.tensor([0, 1, 2, 3]))
    for name, buffer in loss.named_buffers():  # log_normalization stays NaN: Z is not kept from an eval batch
        torch.testing.assert_close(buffer, before[name], rtol=0, atol=0, equal_nan=True)


def test_the_embeddings_and_the_student_get_gradients_the_teacher_features_none() -> None:
    loss = _built()
    student, teacher = _features()
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    loss([student], [teacher], indices=torch.tensor([0, 1, 2, 3])).backward()
    for name, parameter in loss.named_parameters():
        assert parameter.grad is not None and bool(parameter.grad.abs().sum() > 0), name
    assert student.grad is not None and bool(student.grad.abs().sum() > 0)
    assert teacher.grad is None


def test_a_few_optimiser_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(N, D_T)
    student = torch.nn.Parameter(torch.randn(N, D_S))
    loss = CRD(num_samples=N, negatives=N - 1, feat_dim=8, temperature=0.2)
    loss.build(student.detach(), teacher)
    optimiser = torch.optim.Adam([student, *loss.parameters()], lr=0.05)
    indices = torch.arange(N)
    values = []
    for _ in range(60):
        value = loss(student, teacher, indices=indices)
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
        values.append(float(value.detach()))
    first, last = sum(values[:5]) / 5, sum(values[-5:]) / 5
    assert last < 0.8 * first, (first, last)


def test_negatives_are_uniform_over_the_other_rows_never_the_own_row() -> None:
    loss = CRD(num_samples=5, negatives=4, feat_dim=4)
    loss.build(*_features())
    loss.negatives = 2000
    indices = torch.arange(5)
    drawn = loss._draw_negatives(indices)
    assert drawn.shape == (5, 2000)
    for row, index in enumerate(indices.tolist()):
        counts = torch.bincount(drawn[row], minlength=5)
        assert counts[index] == 0
        assert set(drawn[row].tolist()) == set(range(5)) - {index}
        assert bool(((counts[counts > 0] - 500).abs() < 100).all())  # 2000 draws over 4 rows, about 500 each


def test_a_forward_leaves_the_global_rng_untouched_and_the_seed_reproduces_it() -> None:
    student, teacher = _features()
    indices = torch.tensor([0, 1, 2, 3])
    values = []
    for seed in (7, 7, 8):
        torch.manual_seed(1)  # the same embeddings each time
        loss = _built(seed=seed)
        state = torch.get_rng_state()
        values.append(float(loss(student, teacher, indices=indices).detach()))
        assert torch.equal(torch.get_rng_state(), state)
    assert values[0] == values[1] != values[2]


def test_a_layer_output_is_flattened() -> None:
    loss = CRD(num_samples=N, negatives=3, feat_dim=4, student_layers="layer3", teacher_layers="layer4")
    student, teacher = torch.randn(2, 2, 3, 3), torch.randn(2, 5, 1, 1)
    loss.build([student], [teacher])
    assert (loss.embed_student.in_features, loss.embed_teacher.in_features) == (18, 5)
    assert loss([student], [teacher], indices=torch.tensor([0, 1])).shape == ()


def test_negatives_are_capped_at_the_other_samples_with_a_warning() -> None:
    loss = CRD(num_samples=10)
    with pytest.warns(UserWarning, match=r"`negatives`=16384 is more than the 9 other samples .*; using 9"):
        loss.build(*_features())
    assert loss.negatives == 9


def test_num_samples_may_be_set_as_an_attribute_before_build_and_is_needed() -> None:
    loss = CRD(negatives=4)
    with pytest.raises(ValueError, match=r"^CRD needs `num_samples`, the training set's size .* before `build`\.$"):
        loss.build(*_features())
    loss.num_samples = 12
    loss.build(*_features())
    assert loss.memory_teacher.shape == (12, 128)
    loss.num_samples = 1
    with pytest.raises(ValueError, match=r"`num_samples` must be an integer ≥ 2, got 1"):
        loss.build(*_features())


def test_forward_needs_build_and_indices() -> None:
    student, teacher = _features()
    with pytest.raises(ValueError, match=r"call `build\(student_features, teacher_features\)`.*DistillationModule"):
        CRD(num_samples=N)(student, teacher, indices=torch.arange(4))
    loss = _built()
    with pytest.raises(ValueError, match=r"^CRD needs `indices`, each batch sample's index in the training set .*\.$"):
        loss(student, teacher)


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        (torch.tensor([0.0, 1.0, 2.0, 3.0]), r"`indices` must be an integer tensor \[B\] with B = 4, got \(4,\) "),
        (torch.tensor([0, 1, 2]), r"`indices` must be an integer tensor \[B\] with B = 4, got \(3,\) torch.int64"),
        ([0, 1, 2, 3], r"`indices` must be an integer tensor \[B\] with B = 4, got \[0, 1, 2, 3\]"),
        (torch.tensor([0, 1, 2, N]), rf"`indices` must lie in \[0, {N}\) .* got values from 0 to {N}\."),
        (torch.tensor([-1, 1, 2, 3]), r"`indices` must lie in .* got values from -1 to 3\."),
    ],
)
def test_bad_indices_are_refused(indices, message) -> None:
    with pytest.raises(ValueError, match=message):
        _built()(*_features(), indices=indices)


def test_bad_features_are_refused() -> None:
    loss = _built()
    student, teacher = _features()
    with pytest.raises(ValueError, match=r"`student_features` must be one float tensor \[B, D\] .*, got 2 items"):
        loss([student, student], [teacher], indices=torch.arange(4))
    with pytest.raises(ValueError, match=r"`teacher_features` must be one float tensor .*, got \(4,\) torch.float32"):
        loss(student, teacher[:, 0], indices=torch.arange(4))
    with pytest.raises(ValueError, match=r"`student_features` \(4, 6\) and `teacher_features` \(3, 10\) must have"):
        loss(student, teacher[:3], indices=torch.arange(4))
    with pytest.raises(ValueError, match=r"`teacher_features` have 9 values per sample, but CRD was built for 10"):
        loss(student, teacher[:, :9], indices=torch.arange(4))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"feat_dim": 0}, r"`feat_dim` must be an integer ≥ 1, got 0"),
        ({"feat_dim": 12.0}, r"`feat_dim` must be an integer ≥ 1, got 12.0"),
        ({"negatives": 0}, r"`negatives` must be an integer ≥ 1, got 0"),
        ({"negatives": True}, r"`negatives` must be an integer ≥ 1, got True"),
        ({"temperature": 0.0}, r"`temperature` must be a finite number > 0, got 0.0"),
        ({"temperature": float("inf")}, r"`temperature` must be a finite number > 0, got inf"),
        ({"momentum": -0.1}, r"`momentum` must be a finite number ≥ 0, got -0.1"),
        ({"momentum": 1.0}, r"`momentum` must be in \[0, 1\) \(1 would never update the memory banks\), got 1.0"),
        ({"num_samples": 1}, r"`num_samples` must be an integer ≥ 2, got 1"),
        ({"num_samples": 100.0}, r"`num_samples` must be an integer ≥ 2, got 100.0"),
        ({"seed": "0"}, r"`seed` must be an integer, got '0'"),
        ({"weight": -1.0}, r"`weight` must be a finite number ≥ 0, got -1.0"),
        ({"student_layers": ["a", "b"], "teacher_layers": ["c", "d"]}, r"CRD distils one layer pair; got"),
    ],
)
def test_bad_hyperparameters_are_refused_in_init(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        CRD(**kwargs)
