"""PNG and JPEG files as a private image set: pixels, colour, size, order, and unreadable files."""
import os
import sys

import numpy as np
import pytest

import DataReader
from DataReader import DataError
from trainer.data.image_files import read_image_files

Image = pytest.importorskip("PIL.Image")

PILLOW_LINE = ("reading PNG/JPEG files needs Pillow: pip install pillow (or pip install -r "
               "requirements-dev.txt)")


def solid(width: int, height: int, colour, mode: str = "RGB"):
    return Image.new(mode, (width, height), colour)


def test_a_32x32_png_comes_back_exactly(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    path = str(tmp_path / "photo.png")
    Image.fromarray(pixels).save(path)
    images, names = read_image_files(path)
    assert images.dtype == np.uint8 and images.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(images[0], pixels)
    assert names == ["photo.png"]
    # The course API gives the official rows: the red plane, then green, then blue.
    rows = DataReader.load_testing_images(path)
    assert rows.dtype == np.float32 and rows.shape == (1, 3072)
    np.testing.assert_array_equal(rows[0], np.concatenate([pixels[:, :, c].ravel()
                                                           for c in range(3)]))


def test_a_64x48_jpeg_is_resized_with_one_note(tmp_path, capsys):
    solid(64, 48, (200, 100, 50)).save(str(tmp_path / "wide.jpg"), quality=95)
    solid(64, 48, (10, 20, 30)).save(str(tmp_path / "wide2.JPEG"), quality=95)
    solid(32, 32, (0, 0, 0)).save(str(tmp_path / "small.png"))
    images, names = read_image_files(str(tmp_path))
    assert images.shape == (3, 32, 32, 3) and names == ["small.png", "wide.jpg", "wide2.JPEG"]
    assert np.abs(images[1].astype(int) - [200, 100, 50]).max() <= 3  # JPEG is lossy
    assert np.abs(images[2].astype(int) - [10, 20, 30]).max() <= 3
    out = capsys.readouterr().out
    assert out == ("note: 2 of 3 images were not 32x32 (e.g. 64x48) and were resized to "
                   "32x32\n")


def test_grey_and_rgba_pngs_become_rgb_with_alpha_on_white(tmp_path):
    solid(32, 32, 77, "L").save(str(tmp_path / "a_grey.png"))
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[:, :16] = (255, 0, 0, 0)      # transparent: white shows through
    rgba[:, 16:] = (0, 0, 255, 255)    # opaque blue
    rgba[0, 0] = (255, 0, 0, 128)      # half transparent red
    Image.fromarray(rgba, "RGBA").save(str(tmp_path / "b_rgba.png"))
    images, _ = read_image_files(str(tmp_path))
    assert images.shape == (2, 32, 32, 3)
    assert (images[0] == 77).all()
    assert (images[1][1:, :16] == 255).all()
    assert (images[1][:, 16:] == (0, 0, 255)).all()
    assert np.abs(images[1][0, 0].astype(int) - [255, 127, 127]).max() <= 1


def test_a_folder_is_read_in_sorted_order_without_other_files(tmp_path):
    for name, value in (("c.png", 3), ("a.png", 1), ("b.PNG", 2)):
        solid(32, 32, (value, value, value)).save(str(tmp_path / name), format="PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    os.makedirs(tmp_path / "sub")
    solid(32, 32, (9, 9, 9)).save(str(tmp_path / "sub" / "0.png"))
    images, names = read_image_files(str(tmp_path))
    assert names == ["a.png", "b.PNG", "c.png"]
    assert [int(im[0, 0, 0]) for im in images] == [1, 2, 3]


def test_unreadable_files_in_a_folder_are_skipped_and_named(tmp_path, capsys):
    solid(32, 32, (5, 6, 7)).save(str(tmp_path / "good.png"))
    (tmp_path / "bad.png").write_bytes(b"this is text")
    (tmp_path / "empty.jpg").write_bytes(b"")
    images, names = read_image_files(str(tmp_path))
    assert names == ["good.png"] and (images[0] == (5, 6, 7)).all()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: skipped 2 files that are not readable")
    assert "bad.png (cannot identify image file)" in err[0] and "empty.jpg (" in err[0]


def test_images_over_the_decompression_bomb_limit_are_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    solid(20, 20, (1, 2, 3)).save(str(tmp_path / "a_fine.png"))
    solid(40, 30, (1, 2, 3)).save(str(tmp_path / "b_warned.png"))   # 1,200 pixels: a warning
    solid(64, 48, (1, 2, 3)).save(str(tmp_path / "c_refused.png"))  # over twice: an error
    _, names = read_image_files(str(tmp_path))
    assert names == ["a_fine.png"]
    err = capsys.readouterr().err
    assert "b_warned.png (over Pillow's limit" in err and "c_refused.png (over Pillow's" in err


def test_a_folder_without_a_readable_image_is_refused(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "y.jpeg").write_bytes(b"")
    with pytest.raises(DataError, match=r"none of the 2 image files in folder .* is readable: "
                                        r"x\.png \(.*\), y\.jpeg \("):
        read_image_files(str(tmp_path))


def test_a_folder_without_image_files_is_refused(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match=r"holds no PNG or JPEG files"):
        read_image_files(str(tmp_path))


def test_an_unreadable_file_given_alone_is_refused(tmp_path):
    path = tmp_path / "cut.png"
    solid(32, 32, (1, 2, 3)).save(str(tmp_path / "whole.png"))
    path.write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    with pytest.raises(DataError, match=r"cut\.png is not a readable PNG or JPEG image"):
        read_image_files(str(path))


def test_without_pillow_one_line_says_how_to_install_it(tmp_path, monkeypatch):
    solid(32, 32, (1, 2, 3)).save(str(tmp_path / "a.png"))
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(DataError) as e:
        read_image_files(str(tmp_path))
    assert str(e.value) == PILLOW_LINE
