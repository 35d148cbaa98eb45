"""A plain PyTorch training loop, probed as it trains by kd_probe's ProbeRunner — no Lightning Trainer.

It trains a VGG on the built-in shapes from scratch, with the knowledge-point probe and the weight monitor, and
saves the student's weights after every epoch (``epoch_0.pt`` before training), so that
``kd-probe probe --config examples/probe_checkpoints.yaml`` can probe the same run again from its checkpoints:

    python examples/plain_loop.py                        # writes runs/examples/plain_loop and its checkpoints
    kd-probe probe --config examples/probe_checkpoints.yaml
    tensorboard --logdir runs/examples

``--epochs``, ``--train-size`` and ``--image-size`` shrink it for a quick check.
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from kd_probe import KnowledgePointProbe, ProbeRunner, ShapesDataModule, WeightTrajectoryMonitor
from kd_probe.models import VGG


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("runs/examples"))
    args = parser.parse_args()
    torch.manual_seed(0)
    data = ShapesDataModule(num_classes=6, train_size=args.train_size, image_size=args.image_size, probe_size=16)
    data.setup("fit")
    saved = args.out / "checkpoints" / "plain_loop"
    saved.mkdir(parents=True, exist_ok=True)

    # the loop itself: the four runner calls are all kd_probe adds to it
    model = VGG(num_classes=6, widths=(16, 32, 64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    probes = [
        KnowledgePointProbe(data, layer="features.bn6", method="secant", samples=64, passes=2),
        WeightTrajectoryMonitor(),
    ]
    runner = ProbeRunner(probes, args.out / "plain_loop", student=model, max_epochs=args.epochs)
    runner.start()  # epoch 0: the probes look at the untrained network
    torch.save(model.state_dict(), saved / "epoch_0.pt")
    for epoch in range(1, args.epochs + 1):
        model.train()
        for images, labels, _masks in DataLoader(data.train_set, batch_size=64, shuffle=True):
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
            runner.step()  # after each optimizer step: the weight path length D
        runner.epoch_end()  # after `epoch` epochs: the probes due now
        torch.save(model.state_dict(), saved / f"epoch_{epoch}.pt")
    runner.finish()  # summaries (D_mean, D_std, rho) and the TensorBoard HParams
    print(f"probed run in {args.out / 'plain_loop'}, checkpoints in {saved}")


if __name__ == "__main__":
    main()
