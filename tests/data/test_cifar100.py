"""CIFAR-100: the flags, the loader (fine and coarse labels, class names), the download, and train,
test and predict end to end, on tiny CIFAR-100-format files the tests write themselves."""
import os
import pickle
import re
import shutil
import tarfile
import urllib.request

import numpy as np
import pytest

import DataReader
import configure
import main as cli
import trainer.data.download
from DataReader import DataError, class_names, load_data
from cifar_files import (CIFAR10_NAMES, CIFAR100_COARSE_NAMES, CIFAR100_FINE_NAMES, COARSE_OF_FINE,
                         Calls, cifar100_arrays, py2_dumps, write_cifar, write_cifar10_meta,
                         write_cifar100)
from cli_tools import TINY, load, snapshot
from configure import Config, ConfigError
from test_download import closed_port, md5_of, server  # noqa: F401  (server is a fixture)

# Written out here, not taken from configure.py, so that a changed constant fails a test.
PUBLISHED_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
PUBLISHED_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"  # beside the archive on the CIFAR page

STYLES = ["py2", "p2", "p3", "p4", "p5"]
N_TRAIN, N_TEST, SPLIT = 40, 16, 32


def cifar100_dir(tmp_path, style="py2", meta=True, seed=0):
    """data_dir holding cifar-100-python/ (train, test and, with meta, meta): (data_dir, folder)."""
    data_dir = tmp_path / f"data_{style}"
    folder = write_cifar100(str(data_dir), N_TRAIN, N_TEST, seed, style, meta)
    return str(data_dir), folder


def one_line(info) -> str:
    msg = str(info.value)
    assert "\n" not in msg and msg.endswith("."), msg
    return msg


# ------------------------------------------------------------------ the configuration

def test_num_classes_follows_the_data_set_unless_given():
    assert Config().num_classes == 10
    assert Config(dataset="cifar100").num_classes == 100
    assert Config(dataset="cifar100", label_mode="coarse").num_classes == 20
    assert Config(dataset="cifar100", num_classes=7).num_classes == 7
    assert Config(num_classes=10).num_classes == 10
    # From the command line, as main.py builds it; checkpoints store to_dict(): the number itself.
    parser = cli.build_parser()
    for argv, expected in [([], 10), (["--dataset", "cifar100"], 100),
                           (["--dataset", "cifar100", "--label_mode", "coarse"], 20),
                           (["--dataset", "cifar100", "--num_classes", "30"], 30)]:
        config = cli.config_from_args(parser.parse_args(argv))
        assert config.validate().to_dict()["num_classes"] == expected, argv


def test_coarse_labels_of_cifar10_are_refused(capsys):
    with pytest.raises(ConfigError) as info:
        Config(label_mode="coarse").validate()
    assert "--label_mode" in str(info.value) and "--dataset cifar100" in str(info.value)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--mode", "test", "--label_mode", "coarse", "--device", "cpu"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: --label_mode coarse applies to --dataset cifar100"), lines


@pytest.mark.parametrize("num_classes", [1, -3])
def test_num_classes_given_must_still_be_at_least_2(num_classes):
    for dataset in ("cifar10", "cifar100"):
        with pytest.raises(ConfigError, match="--num_classes must be at least 2"):
            Config(dataset=dataset, num_classes=num_classes).validate()


def test_download_url_and_md5_follow_the_data_set():
    assert configure.CIFAR100_URL == PUBLISHED_URL and configure.CIFAR100_MD5 == PUBLISHED_MD5
    assert DataReader.CIFAR100.url == PUBLISHED_URL and DataReader.CIFAR100.md5 == PUBLISHED_MD5
    assert Config(dataset="cifar100").download_url == PUBLISHED_URL
    parser = cli.build_parser()
    assert cli.config_from_args(parser.parse_args(["--dataset", "cifar100"])).download_url == \
        PUBLISHED_URL
    mirror = "http://mirror.example/c100.tar.gz"
    assert Config(dataset="cifar100", download_url=mirror).download_url == mirror


def test_a_checkpoint_records_the_data_set_and_refuses_another():
    for key in ("dataset", "label_mode"):
        assert key in configure.RUN_DEFINING_KEYS and key in configure.ARCHITECTURE_KEYS
    d = Config(dataset="cifar100", label_mode="coarse").to_dict()
    assert (d["dataset"], d["label_mode"], d["num_classes"]) == ("cifar100", "coarse", 20)
    assert Config.from_dict(d) == Config(dataset="cifar100", label_mode="coarse")


# ------------------------------------------------------------------ reading the files

@pytest.mark.parametrize("style", STYLES)
def test_fine_and_coarse_labels_load_as_written(tmp_path, style):
    data_dir, _ = cifar100_dir(tmp_path, style)
    (x_tr, fine_tr, coarse_tr), (x_te, fine_te, coarse_te) = cifar100_arrays(N_TRAIN, N_TEST)
    assert fine_tr.max() >= 20  # so that fine labels read as coarse (or back) could not pass
    fine = load_data(data_dir, 100, "cifar100", "fine")
    coarse = load_data(data_dir, 20, "cifar100", "coarse")
    for got, want in zip(fine, (x_tr, fine_tr, x_te, fine_te)):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(coarse, (x_tr, coarse_tr, x_te, coarse_te)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(coarse[1], COARSE_OF_FINE[fine[1]])
    assert fine[0].dtype == np.uint8 and fine[1].dtype == np.int64 and fine[0].flags.c_contiguous
    assert fine[0].shape == (N_TRAIN, 3072) and fine[2].shape == (N_TEST, 3072)


def test_both_data_sets_side_by_side_and_the_files_themselves(tmp_path):
    data_dir, folder = cifar100_dir(tmp_path)
    write_cifar(data_dir, n_per_batch=3, n_test=2)
    assert DataReader.has_dataset(data_dir, "cifar100")
    assert DataReader.has_dataset(data_dir, "cifar10")
    assert load_data(data_dir)[0].shape == (15, 3072)
    assert load_data(data_dir, 100, "cifar100")[0].shape == (N_TRAIN, 3072)
    for a, b in zip(load_data(folder, 100, "cifar100"), load_data(data_dir, 100, "cifar100")):
        np.testing.assert_array_equal(a, b)
    assert DataReader.has_dataset(folder, "cifar100")
    assert not DataReader.has_dataset(str(tmp_path), "cifar100")


def test_a_cifar10_folder_holds_no_cifar100(tmp_path):
    data_dir = str(tmp_path / "data")
    write_cifar(data_dir, n_per_batch=3, n_test=2)
    assert not DataReader.has_dataset(data_dir, "cifar100")
    with pytest.raises(DataError) as info:
        load_data(data_dir, 100, "cifar100")
    msg = one_line(info)
    assert f"{data_dir} holds no CIFAR-100 batches" in msg and "cifar-100-python.tar.gz" in msg
    path = tmp_path / "a_file"
    path.write_text("mine")
    with pytest.raises(DataError) as info:
        load_data(str(path), 100, "cifar100")
    assert str(info.value) == (f"--data_dir {path} is a file, not a folder; pass the folder that "
                               f"holds (or is to hold) cifar-100-python.")


@pytest.mark.parametrize("label_mode, bad, classes", [("fine", 100, 100), ("fine", -1, 100),
                                                      ("coarse", 20, 20)])
def test_labels_out_of_range_are_refused(tmp_path, label_mode, bad, classes):
    data_dir, folder = cifar100_dir(tmp_path)
    path = os.path.join(folder, "test")
    labels = [0, bad, 1]
    other = [0, 1, 2]
    with open(path, "wb") as f:
        f.write(py2_dumps({b"data": np.zeros((3, 3072), np.uint8),
                           b"fine_labels": labels if label_mode == "fine" else other,
                           b"coarse_labels": labels if label_mode == "coarse" else other}))
    with pytest.raises(DataError) as info:
        load_data(data_dir, classes, "cifar100", label_mode)
    msg = one_line(info)
    assert str(path) in msg and f"[0, {classes})" in msg


def test_num_classes_given_bounds_the_labels(tmp_path):
    data_dir, folder = cifar100_dir(tmp_path)
    with pytest.raises(DataError) as info:
        load_data(data_dir, 20, "cifar100", "fine")  # fine labels, 20 classes asked for
    msg = one_line(info)
    assert os.path.join(folder, "train") in msg and "--num_classes" in msg


@pytest.mark.parametrize("name", ["train", "test"])
@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "hostile",
                                    "no coarse labels", "wrong shape", "folder"])
def test_a_damaged_file_is_named_in_one_sentence(tmp_path, name, damage):
    data_dir, folder = cifar100_dir(tmp_path)
    path = os.path.join(folder, name)
    marker = tmp_path / "PWNED"
    raw = open(path, "rb").read()
    os.remove(path)
    if damage == "truncated":
        open(path, "wb").write(raw[: len(raw) // 2])
    elif damage == "garbage":
        open(path, "wb").write(b"<html>404</html>")
    elif damage == "hostile":
        with open(path, "wb") as f:
            pickle.dump({"data": np.zeros((1, 3072), np.uint8), "fine_labels": [0],
                         "coarse_labels": [0], "x": Calls(os.system, f"touch {marker}")}, f, 2)
    elif damage == "no coarse labels":
        open(path, "wb").write(py2_dumps({b"data": np.zeros((2, 3072), np.uint8),
                                          b"fine_labels": [0, 1]}))
    elif damage == "wrong shape":
        open(path, "wb").write(py2_dumps({b"data": np.zeros((2, 32, 32, 3), np.uint8),
                                          b"fine_labels": [0, 1], b"coarse_labels": [0, 1]}))
    elif damage == "folder":
        os.mkdir(path)
    with pytest.raises(DataError) as info:
        load_data(data_dir, 20, "cifar100", "coarse")
    msg = one_line(info)
    assert str(path) in msg
    says = {"missing": "is missing; put train and test from the CIFAR-100 python version",
            "truncated": "corrupt or truncated", "garbage": "corrupt or truncated",
            "hostile": "is not a CIFAR-100 batch file and was not loaded",
            "no coarse labels": "lacks the 'data' or 'coarse_labels' entry",
            "wrong shape": "(n, 3072)", "folder": "is a folder"}[damage]
    assert says in msg
    assert not marker.exists()


# ------------------------------------------------------------------ class names

@pytest.mark.parametrize("style", ["py2", "p4"])
def test_class_names_come_from_meta(tmp_path, style):
    data_dir, folder = cifar100_dir(tmp_path, style)
    assert class_names(data_dir, "cifar100") == CIFAR100_FINE_NAMES
    assert class_names(data_dir, "cifar100", "coarse") == CIFAR100_COARSE_NAMES
    assert class_names(folder, "cifar100", "coarse") == CIFAR100_COARSE_NAMES
    write_cifar(data_dir, n_per_batch=2, n_test=2, style=style)
    assert class_names(data_dir) is None  # CIFAR-10 without batches.meta: class numbers
    write_cifar10_meta(os.path.join(data_dir, "cifar-10-batches-py"), style=style)
    assert class_names(data_dir) == CIFAR10_NAMES
    assert class_names(data_dir, "cifar10") == CIFAR10_NAMES


def test_without_meta_there_are_no_names(tmp_path):
    data_dir, _ = cifar100_dir(tmp_path, meta=False)
    assert class_names(data_dir, "cifar100") is None
    assert class_names(data_dir, "cifar100", "coarse") is None
    assert class_names(str(tmp_path / "nothing_here"), "cifar100") is None


def _meta(fine=CIFAR100_FINE_NAMES, coarse=CIFAR100_COARSE_NAMES):
    return py2_dumps({b"fine_label_names": [n.encode() for n in fine],
                      b"coarse_label_names": [n.encode() for n in coarse]})


@pytest.mark.parametrize("damage, says", [
    ("truncated", "corrupt or truncated"),
    ("empty", "corrupt or truncated"),
    ("not a dict", "does not hold the dict of a CIFAR-100 meta file"),
    ("hostile", "is not a CIFAR-100 meta file and was not loaded"),
    ("99 names", "must list the 100 class names, found 99 names"),
    ("no fine names", "must list the 100 class names, found no such entry"),
    ("a line break", "class name 3 of 'fine_label_names' is 'a\\nb'"),
    ("folder", "is a folder, not a meta file"),
])
def test_an_unusable_meta_file_is_named(tmp_path, damage, says):
    data_dir, folder = cifar100_dir(tmp_path)
    path = os.path.join(folder, "meta")
    marker = tmp_path / "PWNED"
    good = open(path, "rb").read()
    os.remove(path)
    blob = {"truncated": good[:-3], "empty": b"",
            "not a dict": py2_dumps([b"apple"]),
            "hostile": pickle.dumps(Calls(os.system, f"touch {marker}"), protocol=2),
            "99 names": _meta(fine=CIFAR100_FINE_NAMES[:99]),
            "no fine names": py2_dumps({b"coarse_label_names": [b"x"] * 20}),
            "a line break": _meta(fine=CIFAR100_FINE_NAMES[:3] + ["a\nb"]
                                  + CIFAR100_FINE_NAMES[4:]),
            "folder": None}[damage]
    if blob is None:
        os.mkdir(path)
    else:
        open(path, "wb").write(blob)
    with pytest.raises(DataError) as info:
        class_names(data_dir, "cifar100", "fine")
    msg = one_line(info)
    assert str(path) in msg and says in msg, msg
    assert not marker.exists()


def test_an_unusable_cifar10_meta_file_is_named(tmp_path):
    data_dir = str(tmp_path / "data")
    folder = write_cifar(data_dir, n_per_batch=2, n_test=2)
    path = write_cifar10_meta(folder, names=CIFAR10_NAMES[:9])
    with pytest.raises(DataError) as info:
        class_names(data_dir)
    assert str(path) in one_line(info) and "must list the 10 class names" in str(info.value)


# ------------------------------------------------------------------ the archive, local or fetched

def make_archive(path, staging, n_train=N_TRAIN, n_test=N_TEST):
    """A cifar-100-python.tar.gz look-alike holding cifar-100-python/ made by write_cifar100."""
    folder = write_cifar100(str(staging), n_train, n_test, seed=5)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    return md5_of(path)


def _same_data(a_dir, b_dir):
    for a, b in zip(load_data(a_dir, 100, "cifar100"), load_data(b_dir, 100, "cifar100")):
        np.testing.assert_array_equal(a, b)


def test_download_checks_md5_unpacks_and_loads(tmp_path, server):
    root, base = server
    md5 = make_archive(root / "c100.tar.gz", tmp_path / "staging")
    data_dir = tmp_path / "fresh" / "data"
    DataReader.download_dataset(str(data_dir), "cifar100", f"{base}/c100.tar.gz", md5,
                                progress=False)
    assert sorted(os.listdir(data_dir / "cifar-100-python")) == ["meta", "test", "train"]
    _same_data(str(data_dir), str(tmp_path / "staging"))
    assert class_names(str(data_dir), "cifar100", "coarse") == CIFAR100_COARSE_NAMES


def test_default_md5_is_the_official_cifar100_one(tmp_path, server):
    # The look-alike is not the official archive: refused by the published MD5, downloaded or local.
    root, base = server
    make_archive(root / "c100.tar.gz", tmp_path / "staging")
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match=PUBLISHED_MD5):
        DataReader.download_dataset(str(data_dir), "cifar100", f"{base}/c100.tar.gz",
                                    progress=False)
    assert not data_dir.exists()
    data_dir.mkdir()
    local = data_dir / "cifar-100-python.tar.gz"
    shutil.copy(root / "c100.tar.gz", local)
    with pytest.raises(DataError) as info:
        DataReader.ensure_dataset(str(data_dir), "cifar100", download=False, log=lambda line: None)
    msg = one_line(info)
    assert msg.startswith(f"{local} has MD5 {md5_of(local)}, not {PUBLISHED_MD5}")
    assert os.listdir(data_dir) == ["cifar-100-python.tar.gz"]


def test_local_archive_is_unpacked_without_network(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    local = data_dir / "cifar-100-python.tar.gz"
    md5 = make_archive(local, tmp_path / "staging")
    write_cifar(str(data_dir), n_per_batch=2, n_test=2)  # CIFAR-10 there does not count
    lines = []
    DataReader.ensure_dataset(str(data_dir), "cifar100", True, md5=md5, log=lines.append)
    assert lines == [f"CIFAR-100 not found in {data_dir}; unpacking {local}"]
    _same_data(str(data_dir), str(tmp_path / "staging"))
    lines.clear()
    DataReader.ensure_dataset(str(data_dir), "cifar100", True, md5=md5, log=lines.append)
    assert lines == []


def test_no_download_and_no_data_says_what_to_put_where(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with pytest.raises(DataError) as info:
        DataReader.ensure_dataset(str(data_dir), "cifar100", download=False)
    msg = one_line(info)
    assert msg == (f"{data_dir} holds no CIFAR-100; put the contents of cifar-100-python.tar.gz "
                   f"(cifar-100-python/) there, or drop --no_download to fetch it.")


def test_unreachable_mirror_says_where_to_put_the_files(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/c100.tar.gz"
    data_dir = tmp_path / "data"
    with pytest.raises(DataError) as info:
        DataReader.download_dataset(str(data_dir), "cifar100", url, progress=False)
    msg = one_line(info)
    assert msg.startswith(f"could not download CIFAR-100 from {url}")
    assert os.path.join(str(data_dir), "cifar-100-python") in msg and "train and test" in msg
    assert "cifar-100-python.tar.gz" in msg
    assert not data_dir.exists()


def _train_args(data_dir, modeldir, *more):
    return TINY + ["--mode", "train", "--data_dir", str(data_dir), "--modeldir", str(modeldir),
                   "--split_index", str(SPLIT), "--max_epoch", "1", "--lr_decay_epochs", *more]


def test_cli_downloads_cifar100_then_trains(tmp_path, server, monkeypatch, capsys):
    root, base = server
    md5 = make_archive(root / "c100.tar.gz", tmp_path / "staging")
    url = f"{base}/c100.tar.gz"
    real_download = DataReader.download_dataset
    calls = []

    # The CLI asks for the official MD5 (checked below); the look-alike archive needs its own.
    def download_with_test_md5(data_dir, dataset, url, *args, **kwargs):
        calls.append((data_dir, dataset, url, args))
        return real_download(data_dir, dataset, url, md5, progress=False)

    monkeypatch.setattr(trainer.data.download, "download_dataset", download_with_test_md5)
    data_dir, modeldir = tmp_path / "data", tmp_path / "model"
    args = _train_args(data_dir, modeldir, "--dataset", "cifar100", "--download_url", url)
    args.remove("--no_download")
    rc = cli.main(args)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert calls == [(str(data_dir), "cifar100", url, (PUBLISHED_MD5,))]
    assert f"CIFAR-100 not found in {data_dir}; downloading {url}" in captured.err
    assert load(os.path.join(modeldir, "model-1.ckpt"))["config"]["num_classes"] == 100


def test_cli_fetches_the_official_cifar100_archive_by_default(tmp_path, monkeypatch, capsys):
    calls = []

    def no_network(data_dir, dataset, url, md5, *args, **kwargs):
        calls.append((dataset, url, md5))
        raise DataError("no network in this test.")

    monkeypatch.setattr(trainer.data.download, "download_dataset", no_network)
    args = _train_args(tmp_path / "data", tmp_path / "model", "--dataset", "cifar100")
    args.remove("--no_download")
    assert cli.main(args) == 1
    assert calls == [("cifar100", PUBLISHED_URL, PUBLISHED_MD5)]
    assert capsys.readouterr().err.strip().endswith("error: no network in this test.")


# ------------------------------------------------------------------ train, test, predict end to end

def _flags(data_dir, modeldir, *more):
    return TINY + ["--data_dir", data_dir, "--modeldir", modeldir, *more]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One data_dir holding tiny CIFAR-10 and CIFAR-100 (with meta), and a 1-epoch run on each of
    CIFAR-100 fine, CIFAR-100 coarse and CIFAR-10: (data_dir, {name: modeldir})."""
    root = tmp_path_factory.mktemp("c100_runs")
    data_dir = str(root / "data")
    write_cifar100(data_dir, N_TRAIN, N_TEST, seed=0)
    write_cifar(data_dir, n_per_batch=8, n_test=8, seed=0)
    modeldirs = {}
    for name, more in [("fine", ["--dataset", "cifar100"]),
                       ("coarse", ["--dataset", "cifar100", "--label_mode", "coarse"]),
                       ("cifar10", [])]:
        modeldirs[name] = str(root / name)
        rc = cli.main(_flags(data_dir, modeldirs[name], "--mode", "train", "--max_epoch", "1",
                             "--split_index", str(SPLIT), "--lr_decay_epochs", *more))
        assert rc == 0, name
    return data_dir, modeldirs


@pytest.mark.parametrize("label_mode, classes", [("fine", 100), ("coarse", 20)])
def test_training_on_cifar100_records_the_data_set(runs, label_mode, classes):
    data_dir, modeldirs = runs
    ckpt = load(os.path.join(modeldirs[label_mode], "model-1.ckpt"))
    config = ckpt["config"]
    assert (config["dataset"], config["label_mode"], config["num_classes"]) == \
        ("cifar100", label_mode, classes)
    assert ckpt["model"]["output_layer.fc.weight"].shape[0] == classes
    (x, fine, coarse), _ = cifar100_arrays(N_TRAIN, N_TEST)
    y = fine if label_mode == "fine" else coarse
    assert ckpt["data"] == DataReader.fingerprint(x[:SPLIT], y[:SPLIT])  # trained on those labels


@pytest.mark.parametrize("label_mode, classes", [("fine", 100), ("coarse", 20)])
def test_test_mode_on_cifar100(runs, tmp_path, capsys, label_mode, classes):
    data_dir, modeldirs = runs
    # Test labels the checkpoint gets exactly half right: its own predictions for the first half
    # of the images, another class for the rest. Read with the other label set, or from CIFAR-10,
    # the accuracy would differ.
    model = cli.Model.MyModel(Config(resnet_size=1, first_num_filters=4, device="cpu",
                                     modeldir=modeldirs[label_mode], dataset="cifar100",
                                     label_mode=label_mode, eval_batch_size=64),
                              log=lambda *a: None)
    model.load(1)
    _, (x_test, fine, coarse) = cifar100_arrays(N_TRAIN, N_TEST)
    labels = model.predict_prob(x_test).argmax(axis=1)
    labels[N_TEST // 2:] = (labels[N_TEST // 2:] + 1) % classes
    data_dir = str(tmp_path / "data")
    shutil.copytree(runs[0], data_dir)
    if label_mode == "fine":
        fine = labels
    else:
        coarse = labels
    with open(os.path.join(data_dir, "cifar-100-python", "test"), "wb") as f:
        f.write(py2_dumps({b"data": x_test, b"fine_labels": [int(v) for v in fine],
                           b"coarse_labels": [int(v) for v in coarse]}))
    capsys.readouterr()
    rc = cli.main(_flags(data_dir, modeldirs[label_mode], "--mode", "test", "--checkpoints", "1",
                         "--dataset", "cifar100", "--label_mode", label_mode))
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "error" not in err
    # The start line: the data set taken over, and the classes that follow from it not repeated.
    words = out.splitlines()[0].split()
    assert "dataset=cifar100" in words and "num_classes=" not in out
    assert ("label_mode=coarse" in words) == (label_mode == "coarse")
    rows = [line for line in out.splitlines() if "model-1.ckpt" in line and "50.00" in line]
    assert rows and re.search(rf"\b{N_TEST}\b", rows[0]), out


@pytest.mark.parametrize("label_mode, classes", [("fine", 100), ("coarse", 20)])
def test_predict_mode_on_cifar100(runs, tmp_path, label_mode, classes):
    data_dir, modeldirs = runs
    private = tmp_path / "private.npy"
    images = np.random.default_rng(3).integers(0, 256, (7, 32, 32, 3)).astype(np.uint8)
    np.save(private, images)
    output = tmp_path / "probs.npy"
    rc = cli.main(_flags(data_dir, modeldirs[label_mode], "--mode", "predict", "--dataset",
                         "cifar100", "--label_mode", label_mode, "--private_data", str(private),
                         "--output", str(output)))
    assert rc == 0
    p = np.load(output, allow_pickle=False)
    assert p.dtype == np.float32 and p.shape == (7, classes)
    assert (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


def test_a_cifar10_checkpoint_is_refused_on_cifar100(runs, capsys):
    data_dir, modeldirs = runs
    before = snapshot(modeldirs["cifar10"])
    capsys.readouterr()
    rc = cli.main(_flags(data_dir, modeldirs["cifar10"], "--mode", "test", "--checkpoints", "1",
                         "--dataset", "cifar100"))
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(lines) == 1 and lines[0].startswith("error: ") and "model-1.ckpt" in lines[0], lines
    assert re.search(r"\bcifar10\b", lines[0]) and "cifar100" in lines[0]
    assert snapshot(modeldirs["cifar10"]) == before


def test_resuming_a_cifar10_run_on_cifar100_is_refused(runs, tmp_path, capsys):
    data_dir, modeldirs = runs
    modeldir = str(tmp_path / "model")
    shutil.copytree(modeldirs["cifar10"], modeldir)
    before = snapshot(modeldir)
    capsys.readouterr()
    rc = cli.main(_flags(data_dir, modeldir, "--mode", "train", "--resume", "--max_epoch", "2",
                         "--split_index", str(SPLIT), "--lr_decay_epochs", "--dataset", "cifar100"))
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("error: ") and "model-1.ckpt" in err and "dataset" in err, err
    assert re.search(r"\bcifar10\b", err) and "cifar100" in err
    assert snapshot(modeldir) == before
