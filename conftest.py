"""Shared pytest set-up: doctests see ``torch``; every test runs on few threads and a fixed seed."""

import importlib.util

import pytest
import torch

# the report figures need the optional matplotlib (in the `test` and `report` extras)
collect_ignore = [] if importlib.util.find_spec("matplotlib") else ["kd_probe/_figures.py"]


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace: dict) -> None:
    doctest_namespace["torch"] = torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
