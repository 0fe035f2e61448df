"""``main.py --mode predict`` on PNG/JPEG files, end to end, with a tiny trained model."""
import csv
import os

import numpy as np
import pytest

from cifar_files import write_cifar
from cli_tools import TINY, run_main
from configure import Config
from Model import MyModel

Image = pytest.importorskip("PIL.Image")

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]
ODD_NAME = 'my "best", photo.png'  # a comma and quotes: the CSV must quote it


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(flags for predict with a 1-epoch tiny model, its model folder)."""
    root = tmp_path_factory.mktemp("trained")
    data_dir, modeldir = str(root / "data"), str(root / "model")
    write_cifar(data_dir, n_per_batch=20, n_test=20, seed=0)
    flags = TINY + ["--lr_decay_epochs", "--data_dir", data_dir, "--modeldir", modeldir,
                    "--split_index", "80"]
    done = run_main(flags + ["--max_epoch", "1"])
    assert done.returncode == 0, done.stderr
    return flags[:] + ["--mode", "predict"], modeldir


@pytest.fixture
def photos(tmp_path):
    """A folder of three readable images (one 32x32 PNG with known pixels), and one that is not."""
    folder = tmp_path / "my_photos"
    folder.mkdir()
    pixels = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(str(folder / "b_exact.png"))
    Image.new("RGB", (64, 48), (200, 30, 30)).save(str(folder / "a_wide.jpg"))
    Image.new("L", (32, 32), 90).save(str(folder / ODD_NAME))
    (folder / "c_broken.png").write_bytes(b"not a png")
    return folder, pixels


def expected_label(modeldir: str, pixels: np.ndarray) -> int:
    """The class the trained model gives the image, from the official rows built here."""
    model = MyModel(Config(resnet_size=1, first_num_filters=4, device="cpu", modeldir=modeldir,
                           eval_batch_size=64, amp="off"), log=lambda *a: None)
    model.load(1)
    rows = pixels.transpose(2, 0, 1).reshape(1, 3072).astype(np.float32)
    return int(model.predict_prob(rows)[0].argmax())


def test_predict_a_folder_of_images_to_csv(trained, photos, tmp_path):
    flags, modeldir = trained
    folder, pixels = photos
    output = str(tmp_path / "out.csv")
    done = run_main(flags + ["--private_data", str(folder), "--output", output])
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "note: 1 of 3 images were not 32x32 (e.g. 64x48)" in done.stdout
    assert [line for line in done.stderr.splitlines() if "skipped" in line] == [
        "warning: skipped 1 file that is not a readable image: c_broken.png (cannot identify "
        "image file)"]
    with open(output, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "label", "class_name", "probability"]
    assert [r[0] for r in rows[1:]] == ["a_wide.jpg", "b_exact.png", ODD_NAME]
    for file, label, name, probability in rows[1:]:
        assert 0 <= int(label) < 10 and name == CIFAR10_NAMES[int(label)]
        assert 0.0 <= float(probability) <= 1.0 and len(probability.split(".")[1]) == 4
    assert int(rows[2][1]) == expected_label(modeldir, pixels)


def test_predict_a_single_image_to_npy(trained, photos, tmp_path):
    flags, _ = trained
    folder, _ = photos
    output = str(tmp_path / "probs.npy")
    done = run_main(flags + ["--private_data", str(folder / "b_exact.png"), "--output", output])
    assert done.returncode == 0, done.stderr
    p = np.load(output, allow_pickle=False)
    assert p.shape == (1, 10)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("given", [True, False], ids=["--output", "default output"])
def test_a_folder_to_an_npy_is_refused_since_its_rows_would_name_no_file(trained, photos,
                                                                         tmp_path, given):
    # An .npy holds bare rows: with c_broken.png skipped, row 2 would be ODD_NAME, and nothing
    # in the file would say so.
    flags, modeldir = trained
    folder, _ = photos
    output = str(tmp_path / "probs.npy")
    before = sorted(os.listdir(modeldir))
    done = run_main(flags + ["--private_data", str(folder)]
                    + (["--output", output] if given else []))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "--output" in lines[0] and ".csv" in lines[0] and str(folder) in lines[0], lines[0]
    assert "Traceback" not in done.stderr and "warning" not in done.stderr  # refused first
    assert not os.path.exists(output) and sorted(os.listdir(modeldir)) == before


def test_an_npy_set_still_gives_id_label_rows(trained, tmp_path):
    flags, _ = trained
    private, output = str(tmp_path / "set.npy"), str(tmp_path / "out.csv")
    np.save(private, np.random.default_rng(4).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8))
    done = run_main(flags + ["--private_data", private, "--output", output])
    assert done.returncode == 0, done.stderr
    lines = open(output).read().splitlines()
    assert lines[0] == "id,label" and [line.split(",")[0] for line in lines[1:]] == ["0", "1", "2"]


def test_an_output_that_is_one_of_the_images_is_refused(trained, photos):
    flags, _ = trained
    folder, _ = photos
    target = folder / "a_wide.jpg"
    before = target.read_bytes()
    done = run_main(flags + ["--private_data", str(folder), "--output", str(target)])
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "which this command reads" in done.stderr
    assert target.read_bytes() == before


def test_without_pillow_predict_says_so_in_one_line(trained, photos, tmp_path):
    flags, _ = trained
    folder, _ = photos
    fake = tmp_path / "no_pillow" / "PIL"  # shadows the installed Pillow for the subprocess
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named PIL')\n")
    output = str(tmp_path / "out.csv")
    done = run_main(flags + ["--private_data", str(folder), "--output", output],
                    env={"PYTHONPATH": str(fake.parent)})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: reading PNG/JPEG files needs Pillow: pip install pillow (or pip install -r "
        "requirements-dev.txt)"]
    assert not os.path.exists(output)
