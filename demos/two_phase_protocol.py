"""Recipe: the two-phase feature-mimicking protocol of the knowledge-point paper on the built-in data.

Teacher, distilled student and baseline share one architecture, as in [KP]:

1. train a teacher from scratch;
2. phase 1 ("mimic"): a fresh student learns only MSE(f_student_L(x), f_teacher_L(x)) at the pre-ReLU
   output of layer L, no labels; phase 2 ("head"): layers up to L frozen, the rest trained with labels;
3. a baseline: the same architecture from scratch, same optimiser and schedule.

Run: ``python demos/two_phase_protocol.py [--epochs 4]`` (about a minute at the default).
Logs: ``tensorboard --logdir runs/two_phase``.
"""

import argparse

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

from kd_probe import DistillationModule, ShapesDataModule, run_two_phase
from kd_probe.models import VGG

LAYER = "features.bn4"  # pre-ReLU output of the 4th convolution (stage 2 of the VGG below)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = ShapesDataModule(num_classes=6, train_size=2000, val_size=500, test_size=500, batch_size=64, seed=args.seed)
    options = dict(optimizer="adamw", lr=3e-3, weight_decay=1e-4)

    def trainer(run: str, epochs: int) -> pl.Trainer:
        return pl.Trainer(max_epochs=epochs, logger=TensorBoardLogger("runs/two_phase", name=run, version=""))

    def network() -> VGG:
        return VGG(num_classes=6, widths=(16, 32, 64), convs_per_stage=2)

    pl.seed_everything(args.seed)
    teacher = DistillationModule(network(), **options)
    trainer("teacher", args.epochs).fit(teacher, datamodule=data)

    pl.seed_everything(args.seed)
    result = run_two_phase(
        network(),
        teacher.student,
        data,
        layer=LAYER,
        mimic_epochs=args.epochs,
        head_epochs=args.epochs,
        mimic_trainer_options=dict(logger=TensorBoardLogger("runs/two_phase", name="distilled_mimic", version="")),
        head_trainer_options=dict(logger=TensorBoardLogger("runs/two_phase", name="distilled_head", version="")),
        **options,
    )

    pl.seed_everything(args.seed)
    baseline = DistillationModule(network(), **options)
    trainer("baseline", args.epochs).fit(baseline, datamodule=data)

    for name, module in (("teacher", teacher), ("distilled", result.head_module), ("baseline", baseline)):
        (metrics,) = pl.Trainer(logger=False, enable_progress_bar=False).test(module, datamodule=data, verbose=False)
        print(f"{name:<10} test accuracy {metrics['test/acc']:.1%}")


if __name__ == "__main__":
    main()
