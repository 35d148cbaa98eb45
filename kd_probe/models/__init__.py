"""Small CNNs written in plain torch, with readable layer names, for teachers and students.

``VGG`` (plain conv stacks) and ``ResNet`` (basic residual blocks) take width/depth options, so a
wider/deeper teacher and a small student exist without torchvision.
``PointNet`` and ``EdgeConvNet`` (a small DGCNN) classify point clouds ``[N, P, 3]`` for the point data.
``load_weights`` gives a network the weights of a checkpoint (a trained teacher) or of a state_dict file.
"""

from kd_probe.models._weights import load_weights
from kd_probe.models.points import EdgeConvNet, PointNet
from kd_probe.models.resnet import BasicBlock, ResNet
from kd_probe.models.text import TokenCNN, TokenTransformer
from kd_probe.models.vgg import VGG

__all__ = ["VGG", "BasicBlock", "EdgeConvNet", "PointNet", "ResNet", "TokenCNN", "TokenTransformer", "load_weights"]
