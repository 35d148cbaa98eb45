"""Small CNNs written in plain torch, with readable layer names, for teachers and students.

``VGG`` (plain conv stacks) and ``ResNet`` (basic residual blocks) take width/depth options, so a
wider/deeper teacher and a small student exist without torchvision.
"""

from kd_probe.models.resnet import BasicBlock, ResNet
from kd_probe.models.vgg import VGG

__all__ = ["VGG", "BasicBlock", "ResNet"]
