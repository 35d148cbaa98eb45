"""Shared pytest set-up: doctests see ``torch``; every test runs on few threads and a fixed seed."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace: dict) -> None:
    doctest_namespace["torch"] = torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
