"""KnowledgePointProbe's defaults: σ settings sized for live curves, λ by architecture, a warning before a first probe
that would cost far more than a training epoch, and what the path length D tracks, in words."""

import logging
import warnings

import pytest
import torch
from torch import nn

from kd_probe import KnowledgePointProbe
from kd_probe.callbacks import _sigma_defaults, knowledge_points
from kd_probe.callbacks._sigma_cost import SigmaCost
from kd_probe.callbacks._sigma_defaults import cheaper_settings, first_probe_warning, with_live_defaults
from kd_probe.callbacks.schedule import ProbeSchedule
from kd_probe.core._feature_graph import residual_additions
from kd_probe.models import ResNet
from kd_probe.modules import DistillationModule
from tests.callbacks.conftest import tiny_data, tiny_net, trainer

RANK_ZERO = "lightning.pytorch.utilities.rank_zero"


class Block(nn.Module):
    """A user's residual block: in-place ReLU, ``out += identity``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += x
        return self.relu(out)


class SmallResNet(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block1, self.block2 = Block(4), Block(4)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.block1(self.stem(x))))


class Branchy(nn.Module):
    """A forward that fx cannot trace (control flow on a tensor's value)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if x.sum() > 0:
            x = x * 2
        return self.head(x.mean((2, 3)))


def test_the_defaults_are_the_secant_engine_with_two_passes_of_64_samples():
    data = tiny_data()
    assert with_live_defaults({}) == {"method": "secant", "passes": 2, "samples": 64}
    assert with_live_defaults({"samples": 32}) == {"method": "secant", "passes": 2, "samples": 32}
    assert with_live_defaults({"method": "faithful"}) == {"method": "faithful"}  # the paper's 96 × 80
    probe = KnowledgePointProbe(data, layer="features.bn2")
    assert {k: probe.settings[k] for k in ("method", "passes", "samples", "lam")} == {
        "method": "secant",
        "passes": 2,
        "samples": 64,
        "lam": 7.0,
    }
    assert "passes" not in KnowledgePointProbe(data, layer="features.bn2", method="faithful").settings


def test_residual_additions_are_counted_before_the_layer_only():
    example = torch.randn(1, 3, 16, 16)
    assert residual_additions(SmallResNet(), "block2.conv2", example) == 1
    assert residual_additions(SmallResNet(), "head.2", example) == 2
    assert residual_additions(tiny_net(), "features.bn2", example) == 0
    assert residual_additions(Branchy(), "conv", example) is None
    assert residual_additions(ResNet(3), "layer3.0.relu2", torch.randn(1, 3, 32, 32)) > 0


@pytest.mark.parametrize(
    ("network", "layer", "given", "lam", "words"),
    [
        (SmallResNet, "block2.bn2", {}, 6.0, "λ = 6, the [KP] authors' value for ResNets"),
        (tiny_net, "features.bn2", {}, 7.0, "λ = 7, the [KP] authors' value for VGG-like networks"),
        (Branchy, "conv", {}, 7.0, "could not be traced"),
        (SmallResNet, "block2.bn2", {"lam": 5.5}, 5.5, None),
    ],
)
def test_lambda_is_chosen_by_architecture_and_said_at_setup(tmp_path, caplog, network, layer, given, lam, words):
    data = tiny_data()
    probe = KnowledgePointProbe(data, layer=layer, epochs=[0], samples=2, **given)
    with caplog.at_level(logging.INFO, logger=RANK_ZERO):
        trainer(tmp_path, max_epochs=1, callbacks=[probe]).fit(DistillationModule(network()), datamodule=data)
    assert probe.settings["lam"] == lam and probe.history[0]["failed"] is None
    (summary,) = tmp_path.rglob("kd_probe_summary.json")
    assert f'"lam": {lam}' in summary.read_text()
    said = [r.getMessage() for r in caplog.records if "λ =" in r.getMessage()]
    assert (said == []) if words is None else (len(said) == 1 and words in said[0])


def test_token_units_keep_lambda_7():
    from kd_probe.core.units import Tokens

    lam, words = _sigma_defaults.choose_lam(nn.Identity(), "x", torch.zeros(1, 3), Tokens())
    assert lam == 7.0 and "pass `lam=`" in words


def test_cheaper_settings_fit_the_budget():
    secant = {"method": "secant", "passes": 2, "samples": 64}
    assert cheaper_settings(secant, 16, expected=80.0, budget=5.0) == (
        "samples=16 and 4 of the 16 probe images, or probe every 16 epochs (`every_n_epochs=16`)"
    )
    assert cheaper_settings(secant, 16, expected=20.0, budget=5.0) == (
        "samples=16, or probe every 4 epochs (`every_n_epochs=4`)"
    )
    assert cheaper_settings({"method": "faithful"}, 16, expected=80.0, budget=5.0).startswith("method='secant'")


def test_the_warning_counts_the_epochs_between_probes():
    secant = {"method": "secant", "passes": 2, "samples": 64}
    assert first_probe_warning(2.5, (0.7, 192), 4.0, secant, 16) is None  # 2.5 s every 4 epochs: fits
    text = first_probe_warning(2.5, (0.7, 192), 1.0, secant, 16)
    assert text is not None and "about 4× a training epoch" in text and "`every_n_epochs=4`" in text
    text = first_probe_warning(30.0, (0.5, 192), 4.0, secant, 16)
    assert text is not None and "about 15× the 4 epochs between two probes" in text
    assert "or probe every 60 epochs (`every_n_epochs=60`)" in text  # 30 s against 0.5 s epochs
    assert first_probe_warning(None, (0.7, 192), 1.0, secant, 16) is None  # no dry run
    assert first_probe_warning(30.0, None, 1.0, secant, 16) is None  # an epoch of unknown size
    schedules = ((None, 4), (None, None), ([0, 2, 3], None), ([3], None))
    assert [ProbeSchedule(*schedule).mean_gap(12) for schedule in schedules] == [4.0, 1.0, 1.5, 1.0]
    assert ProbeSchedule("paper", None).mean_gap(150) == 150 / 14


def test_a_probe_far_costlier_than_an_epoch_is_warned_about_before_the_first_probe(tmp_path, monkeypatch):
    data = tiny_data()  # 64 training images in 4 batches of 16
    monkeypatch.setattr(knowledge_points, "estimate_sigma_cost", lambda *_: SigmaCost(80.0, "a test", 1e-3))
    probe = KnowledgePointProbe(data, layer="features.bn2", epochs=[0, 1], samples=4)
    seen: list[int] = []
    real_probe = probe.probe
    monkeypatch.setattr(probe, "probe", lambda *args: seen.append(len(caught)) or real_probe(*args))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, max_epochs=1, callbacks=[probe]).fit(DistillationModule(tiny_net()), datamodule=data)
    texts = [str(w.message) for w in caught if "KnowledgePointProbe" in str(w.message)]
    assert len(texts) == 1, texts  # once: not again after the first epoch
    epoch = 3 * 64 * 1e-3  # three passes per training image
    assert (
        f"expected to take about 80 s, about {80 / epoch:.0f}× a training epoch (an epoch estimated at 0.192 s for 64"
        in texts[0]
    )
    assert "settings that fit: 1 of the 6 probe images, or probe every 417 epochs (`every_n_epochs=417`)" in texts[0]
    first = next(i for i, w in enumerate(caught) if "KnowledgePointProbe" in str(w.message))
    assert seen and seen[0] > first  # said before the first probe ran


def test_a_probe_that_fits_an_epoch_is_not_warned_about(tmp_path, monkeypatch):
    data = tiny_data()
    monkeypatch.setattr(knowledge_points, "estimate_sigma_cost", lambda *_: SigmaCost(0.5, "a test", 1e-3))
    probe = KnowledgePointProbe(data, layer="features.bn2", epochs=[0], samples=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, max_epochs=1, callbacks=[probe]).fit(DistillationModule(tiny_net()), datamodule=data)
    assert not [w for w in caught if "expected to take" in str(w.message)]


@pytest.mark.parametrize(
    ("layer", "words"),
    [
        ("features.bn2", "`features.bn2` (BatchNorm2d) has only a per-channel weight (a scale), not a filter bank"),
        ("features.relu2", "`features.relu2` (ReLU) has no weight"),
    ],
)
def test_what_the_path_length_tracks_is_said_rightly(tmp_path, caplog, layer, words):
    data = tiny_data()
    probe = KnowledgePointProbe(data, layer=layer, epochs=[0], samples=2)
    with caplog.at_level(logging.INFO, logger=RANK_ZERO):
        trainer(tmp_path, max_epochs=1, callbacks=[probe]).fit(DistillationModule(tiny_net()), datamodule=data)
    said = [r.getMessage() for r in caplog.records if "path length D tracks" in r.getMessage()]
    assert len(said) == 1 and words in said[0] and "`features.conv2`, the last convolution" in said[0]


def test_the_history_records_the_probe_images_normalisation_when_their_source_says(tmp_path):
    data = tiny_data()  # a data module with mean and std
    probe = KnowledgePointProbe(data, layer="features.bn2", epochs=[0], samples=2)
    trainer(tmp_path, max_epochs=1, callbacks=[probe]).fit(DistillationModule(tiny_net()), datamodule=data)
    (path,) = tmp_path.rglob("kd_probe_history.pt")
    history = torch.load(path, weights_only=True)
    assert history["mean"] == list(data.mean) and history["std"] == list(data.std)
    images = torch.stack([data.probe_set[i][0] for i in range(len(data.probe_set))])
    masks = torch.stack([data.probe_set[i][2] for i in range(len(data.probe_set))])
    assert KnowledgePointProbe(images, masks, layer="features.bn2").normalization == {}  # tensors do not say
