import pytest
import torch

from kd_probe.functional import unpack_batch


def test_dict_batches_and_extra_items_are_accepted() -> None:
    x, y, m = torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long), torch.zeros(2, 4, 4, dtype=torch.bool)
    assert unpack_batch({"image": x, "label": y, "mask": m})[0] is x
    assert unpack_batch([x, y, m, "extra"])[1] is y
    with pytest.raises(ValueError, match=r"a dict batch needs 'image' and 'label' keys, got keys \['img', 'label'\]"):
        unpack_batch({"img": x, "label": y})
    with pytest.raises(
        ValueError, match=r"a batch must be a tuple/list \(inputs, labels, ...\) or a dict .*, got Tensor"
    ):
        unpack_batch(x)
