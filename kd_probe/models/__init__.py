"""Small CNNs written in plain torch, with readable layer names, for teachers and students.

``VGG`` (plain conv stacks) and ``ResNet`` (basic residual blocks) take width/depth options, so a
wider/deeper teacher and a small student exist without torchvision.
``PointNet`` and ``EdgeConvNet`` (a small DGCNN) classify point clouds ``[N, P, 3]`` for the point data.
``load_weights`` gives a network the weights of a checkpoint (a trained teacher, any trainer's checkpoint) or of a
state_dict file; ``read_state`` reads such a file's state dict and epoch without a network; ``fitting_state``
checks that a file fits a network without loading it.
"""

from kd_probe.models._weights import fitting_state, load_weights, read_state
from kd_probe.models.points import EdgeConvNet, PointNet
from kd_probe.models.resnet import BasicBlock, ResNet
from kd_probe.models.text import TokenCNN, TokenTransformer
from kd_probe.models.vgg import VGG

__all__ = [
    "VGG",
    "BasicBlock",
    "EdgeConvNet",
    "PointNet",
    "ResNet",
    "TokenCNN",
    "TokenTransformer",
    "fitting_state",
    "load_weights",
    "read_state",
]
