import numpy as np
import pytest
from PIL import Image

from edge.errors import ImageError
from edge.imageio import load_bgr


def _rgb(h: int = 40, w: int = 60) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 4 % 256, y * 6 % 256, (x + y) % 256], axis=2).astype(np.uint8)


def test_png_roundtrip_is_bgr(tmp_path):
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_bgr(tmp_path / "a.png"), rgb[:, :, ::-1])


def test_grayscale_cmyk_and_alpha_become_bgr(tmp_path):
    rgb = _rgb()
    Image.fromarray(rgb).convert("L").save(tmp_path / "g.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0  # transparent corner → white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    for name in ("g.png", "c.jpg", "a.png"):
        out = load_bgr(tmp_path / name)
        assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    assert (load_bgr(tmp_path / "a.png")[:10, :10] == 255).all()
    assert np.abs(load_bgr(tmp_path / "c.jpg").astype(int) - rgb[:, :, ::-1]).mean() < 12


def test_exif_rotation_is_applied(tmp_path):
    rgb = _rgb()
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = load_bgr(tmp_path / "r.jpg")
    assert out.shape == (60, 40, 3)


def test_bad_inputs_are_clear_errors(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageError, match="empty"):
        load_bgr(tmp_path / "empty.jpg")
    with pytest.raises(ImageError, match="not a readable image"):
        load_bgr(tmp_path / "text.jpg")
    with pytest.raises(ImageError, match="no such file"):
        load_bgr(tmp_path / "absent.jpg")
    with pytest.raises(ImageError, match="a folder, not an image file"):
        load_bgr(tmp_path)


def test_pixel_limit_is_enforced_before_decoding(tmp_path):
    # A 20000×20000 PNG header with almost no data: refused from the header alone, never decoded.
    Image.new("L", (20000, 20000)).save(tmp_path / "huge.png", optimize=True)
    with pytest.raises(ImageError, match="exceeds the limit"):
        load_bgr(tmp_path / "huge.png")
