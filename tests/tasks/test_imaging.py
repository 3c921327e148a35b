import numpy as np
import pytest

from tasks.imaging import load_array, save_array


@pytest.mark.parametrize(
    "pixels",
    [
        np.array([[0, 1000], [40000, 65535]], dtype=np.uint16),
        np.array([[0, 7], [128, 255]], dtype=np.uint8),
        np.arange(24, dtype=np.uint8).reshape(2, 4, 3),
    ],
    ids=["gray16", "gray8", "rgb"],
)
def test_save_then_load_gives_the_same_array(tmp_path, pixels):
    back = load_array(save_array(pixels, tmp_path / "x.png"))
    assert back.dtype == pixels.dtype and np.array_equal(back, pixels)
