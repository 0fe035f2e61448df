"""DataReader.download_cifar10 and the CLI's download path, against a local HTTP server (CIFAR-100:
test_cifar100.py)."""
import errno
import functools
import hashlib
import http.server
import io
import os
import socket
import subprocess
import sys
import shutil
import tarfile
import threading
import urllib.request

import numpy as np
import pytest

import DataReader
import configure
import main as cli
import trainer.data.download
from trainer.app import dataset
from DataReader import DataError
from cifar_files import write_cifar
from cli_tools import ROOT
from trainer.data.archive import safe_extract

# Written out here, not taken from configure.py, so that a changed constant fails a test.
PUBLISHED_MD5 = "c58f30108f718f92721af3b95e74349a"  # beside the archive on the CIFAR-10 page
PUBLISHED_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1 (a free port) for the duration of a test; yield (root, base)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def md5_of(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def make_archive(path, staging, n_per_batch=20, n_test=10):
    """A cifar-10-python.tar.gz look-alike holding cifar-10-batches-py/ made by write_cifar."""
    folder = write_cifar(str(staging), n_per_batch, n_test, seed=3, style="py2")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return md5_of(path)


def closed_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def all_files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder)
                  for d, _, files in os.walk(folder) for f in files)


# ------------------------------------------------------------------ download_cifar10

def test_download_checks_md5_unpacks_and_loads(tmp_path, server):
    root, base = server
    md5 = make_archive(root / "cifar.tar.gz", tmp_path / "staging")
    data_dir = tmp_path / "fresh" / "data"  # does not exist yet
    DataReader.download_cifar10(str(data_dir), f"{base}/cifar.tar.gz", md5, progress=False)
    assert DataReader.has_cifar10(str(data_dir))
    assert all_files(data_dir) == sorted(os.path.join("cifar-10-batches-py", n) for n in
                                         DataReader.TRAIN_BATCHES + ["test_batch"])
    x_train, y_train, x_test, y_test = DataReader.load_data(str(data_dir))
    reference = DataReader.load_data(str(tmp_path / "staging"))
    for a, b in zip((x_train, y_train, x_test, y_test), reference):
        np.testing.assert_array_equal(a, b)
    assert x_train.shape == (100, 3072) and x_test.shape == (10, 3072)


def test_wrong_md5_is_refused_and_leaves_nothing_behind(tmp_path, server):
    root, base = server
    md5 = make_archive(root / "cifar.tar.gz", tmp_path / "staging")
    wrong = "0" * 32
    assert md5 != wrong
    data_dir = tmp_path / "data"
    with pytest.raises(DataError) as info:
        DataReader.download_cifar10(str(data_dir), f"{base}/cifar.tar.gz", wrong, progress=False)
    msg = str(info.value)
    assert "MD5" in msg and md5 in msg and wrong in msg
    assert not data_dir.exists()  # the folder it made is gone again: no .part, nothing unpacked
    assert not DataReader.has_cifar10(str(data_dir))


def test_configured_md5_and_url_are_the_published_ones():
    assert configure.CIFAR10_MD5 == PUBLISHED_MD5
    assert configure.CIFAR10_URL == PUBLISHED_URL
    assert configure.Config().download_url == PUBLISHED_URL


def test_default_md5_is_the_official_one(tmp_path, server):
    # Our look-alike archive is not the official file, so the default check must reject it, naming
    # the published MD5, whether it is downloaded or found in data_dir.
    root, base = server
    make_archive(root / "cifar.tar.gz", tmp_path / "staging")
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match=PUBLISHED_MD5):
        DataReader.download_cifar10(str(data_dir), f"{base}/cifar.tar.gz", progress=False)
    assert not data_dir.exists()  # the folder it made is gone again: no .part, nothing unpacked
    data_dir.mkdir()
    (data_dir / "cifar-10-python.tar.gz").write_bytes((root / "cifar.tar.gz").read_bytes())
    with pytest.raises(DataError, match=PUBLISHED_MD5):
        DataReader.ensure_cifar10(str(data_dir), download=False, log=lambda line: None)


@pytest.mark.parametrize("where", ["closed_port", "404"])
def test_unreachable_url_says_where_to_put_the_files(tmp_path, server, where):
    _, base = server
    url = (f"http://127.0.0.1:{closed_port()}/cifar.tar.gz" if where == "closed_port"
           else f"{base}/no-such-file.tar.gz")
    data_dir = tmp_path / "data"
    with pytest.raises(DataError) as info:
        DataReader.download_cifar10(str(data_dir), url, "0" * 32, progress=False)
    msg = str(info.value)
    assert url in msg
    assert os.path.join(str(data_dir), "cifar-10-batches-py") in msg
    assert "data_batch_1..5" in msg and "test_batch" in msg
    assert not data_dir.exists()  # the folder it made is gone again: no .part, nothing unpacked


def test_non_archive_with_matching_md5_is_refused_cleanly(tmp_path, server):
    root, base = server
    (root / "junk.tar.gz").write_bytes(b"this is not a gzip file" * 10)
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match="could not be unpacked"):
        DataReader.download_cifar10(str(data_dir), f"{base}/junk.tar.gz",
                                    md5_of(root / "junk.tar.gz"), progress=False)
    assert not data_dir.exists()  # the folder it made is gone again: no .part, nothing unpacked


def _add_file(tar, name, data=b"evil"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _malicious_archive(path, kind, outside):
    with tarfile.open(path, "w:gz") as tar:
        # A harmless member first: it must not be unpacked either, since the archive is refused.
        _add_file(tar, "cifar-10-batches-py/readme.txt", b"ok")
        if kind == "dotdot":
            _add_file(tar, "../evil")
        elif kind == "nested_dotdot":
            _add_file(tar, "cifar-10-batches-py/../../evil")
        elif kind == "absolute":
            _add_file(tar, str(outside / "evil"))
        elif kind in ("symlink", "symlink_then_write"):
            link = tarfile.TarInfo("cifar-10-batches-py/link")
            link.type = tarfile.SYMTYPE
            link.linkname = str(outside)
            tar.addfile(link)
            if kind == "symlink_then_write":
                _add_file(tar, "cifar-10-batches-py/link/evil")
        elif kind == "relative_symlink":
            link = tarfile.TarInfo("cifar-10-batches-py/link")
            link.type = tarfile.SYMTYPE
            link.linkname = "../../outside/evil"
            tar.addfile(link)
        elif kind == "hardlink":
            link = tarfile.TarInfo("cifar-10-batches-py/hard")
            link.type = tarfile.LNKTYPE
            link.linkname = str(outside / "victim")
            tar.addfile(link)
        elif kind == "fifo":
            fifo = tarfile.TarInfo("cifar-10-batches-py/fifo")
            fifo.type = tarfile.FIFOTYPE
            tar.addfile(fifo)
        else:
            raise AssertionError(kind)
        _add_file(tar, "cifar-10-batches-py/after.txt", b"ok")


@pytest.mark.parametrize("kind", ["dotdot", "nested_dotdot", "absolute", "symlink",
                                  "symlink_then_write", "relative_symlink", "hardlink", "fifo"])
def test_malicious_archives_are_refused(tmp_path, server, kind):
    root, base = server
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("precious")
    _malicious_archive(root / "evil.tar.gz", kind, outside)
    # Everything under tmp_path before the call (the served archive included).
    before = all_files(tmp_path)
    data_dir = tmp_path / "data"
    with pytest.raises(DataError) as info:
        DataReader.download_cifar10(str(data_dir), f"{base}/evil.tar.gz",
                                    md5_of(root / "evil.tar.gz"), progress=False)
    assert "not unpacked" in str(info.value)
    assert not data_dir.exists()  # the folder it made is gone again: no .part, nothing unpacked
    assert all_files(tmp_path) == before, "nothing may be written anywhere else"
    assert not (tmp_path / "evil").exists()
    assert not os.path.lexists(data_dir / "cifar-10-batches-py" / "link")
    assert (outside / "victim").read_text() == "precious"


def test_safe_extract_accepts_a_plain_archive_with_folders(tmp_path):
    archive = tmp_path / "ok.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        folder = tarfile.TarInfo("cifar-10-batches-py")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        _add_file(tar, "cifar-10-batches-py/sub/file.bin", b"\x00\x01\x02")
        _add_file(tar, "./top.txt", b"top")
    target = tmp_path / "target"
    target.mkdir()
    safe_extract(str(archive), str(target))
    assert (target / "cifar-10-batches-py" / "sub" / "file.bin").read_bytes() == b"\x00\x01\x02"
    assert (target / "top.txt").read_bytes() == b"top"


def tree(folder):
    """Every folder and file under folder, hidden ones included: relative path -> bytes or None."""
    found = {}
    for d, dirs, files in os.walk(folder):
        for name in dirs:
            found[os.path.relpath(os.path.join(d, name), folder)] = None
        for name in files:
            path = os.path.join(d, name)
            found[os.path.relpath(path, folder)] = open(path, "rb").read()
    return found


@pytest.fixture
def archive(tmp_path):
    """(path, md5) of a look-alike cifar-10-python.tar.gz outside any data_dir."""
    path = tmp_path / "cifar-10-python.tar.gz"
    return path, make_archive(path, tmp_path / "staging")


def _data_dir_with_notes(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "notes.txt").write_text("mine")
    return data_dir


# ------------------------------------------------------------------ unpacking: all or nothing

def _copy_that_fails(monkeypatch, error, on_call=2):
    """Make the on_call-th member copy write half of its bytes, then raise error."""
    real_copy = shutil.copyfileobj
    calls = []

    def copy(src, dst, *args):
        calls.append(dst.name)
        if len(calls) < on_call:
            return real_copy(src, dst, *args)
        data = src.read()
        dst.write(data[: len(data) // 2])
        dst.flush()
        assert os.path.getsize(dst.name) > 0  # a partly written member really is on disk
        raise error

    monkeypatch.setattr(shutil, "copyfileobj", copy)
    return calls


def test_disk_full_while_unpacking_leaves_data_dir_as_it_was(tmp_path, archive, monkeypatch):
    data_dir = _data_dir_with_notes(tmp_path)
    before = tree(data_dir)
    calls = _copy_that_fails(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    with pytest.raises(DataError) as info:
        safe_extract(str(archive[0]), str(data_dir))
    assert len(calls) == 2  # one member complete, the second half written when the disk filled
    msg = str(info.value)
    assert "space" in msg and str(data_dir) in msg and str(archive[0]) in msg
    assert tree(data_dir) == before  # no partly unpacked member, no temporary folder
    assert not DataReader.has_cifar10(str(data_dir))


def test_ctrl_c_while_unpacking_leaves_data_dir_as_it_was(tmp_path, archive, monkeypatch):
    data_dir = _data_dir_with_notes(tmp_path)
    before = tree(data_dir)
    _copy_that_fails(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        safe_extract(str(archive[0]), str(data_dir))
    assert tree(data_dir) == before


def test_a_file_in_the_way_is_named_and_left_untouched(tmp_path, archive):
    # The archive in data_dir (MD5 matching) is unpacked, but a plain file holds the folder's name.
    data_dir = _data_dir_with_notes(tmp_path)
    shutil.copy(archive[0], data_dir / "cifar-10-python.tar.gz")
    (data_dir / "cifar-10-batches-py").write_text("not a folder")
    before = tree(data_dir)
    with pytest.raises(DataError) as info:
        DataReader.ensure_cifar10(str(data_dir), download=False, md5=archive[1],
                                  log=lambda line: None)
    msg = str(info.value)
    assert str(data_dir / "cifar-10-batches-py") in msg and "in the way" in msg
    assert tree(data_dir) == before


def test_an_empty_batch_folder_is_filled(tmp_path, archive):
    data_dir = tmp_path / "data"
    (data_dir / "cifar-10-batches-py").mkdir(parents=True)
    safe_extract(str(archive[0]), str(data_dir))
    assert DataReader.load_data(str(data_dir))[0].shape == (100, 3072)
    assert sorted(os.listdir(data_dir)) == ["cifar-10-batches-py"]


def test_a_failed_move_puts_everything_back(tmp_path, monkeypatch):
    # Two top-level entries: the first is moved in (over an empty folder), the second fails.
    path = tmp_path / "two.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        _add_file(tar, "cifar-10-batches-py/test_batch", b"batch")
        _add_file(tar, "readme.txt", b"hello")
    data_dir = _data_dir_with_notes(tmp_path)
    (data_dir / "cifar-10-batches-py").mkdir()
    before = tree(data_dir)
    real_replace = os.replace

    def replace(src, dst):
        if os.path.basename(dst) == "readme.txt":
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(DataError, match="could not unpack"):
        safe_extract(str(path), str(data_dir))
    assert tree(data_dir) == before


# ------------------------------------------------------------------ an archive already in data_dir

def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(trainer.data.download, "download_dataset", refuse)


@pytest.mark.parametrize("download", [False, True])
def test_archive_in_data_dir_is_checked_and_unpacked_without_network(tmp_path, archive,
                                                                     monkeypatch, download):
    _no_network(monkeypatch)
    data_dir = _data_dir_with_notes(tmp_path)
    local = data_dir / "cifar-10-python.tar.gz"
    shutil.copy(archive[0], local)
    lines = []
    DataReader.ensure_cifar10(str(data_dir), download, "http://127.0.0.1:9/never.tar.gz",
                              archive[1], log=lines.append)
    assert lines == [f"CIFAR-10 not found in {data_dir}; unpacking {local}"]
    for a, b in zip(DataReader.load_data(str(data_dir)),
                    DataReader.load_data(str(tmp_path / "staging"))):
        np.testing.assert_array_equal(a, b)
    assert local.read_bytes() == archive[0].read_bytes()  # kept as it was
    assert sorted(os.listdir(data_dir)) == ["cifar-10-batches-py", "cifar-10-python.tar.gz",
                                            "notes.txt"]
    lines.clear()
    DataReader.ensure_cifar10(str(data_dir), download, md5=archive[1], log=lines.append)
    assert lines == []  # the batches are there now: nothing more to do


def test_archive_in_data_dir_with_another_md5_is_refused_and_kept(tmp_path, archive, monkeypatch):
    _no_network(monkeypatch)
    data_dir = _data_dir_with_notes(tmp_path)
    local = data_dir / "cifar-10-python.tar.gz"
    shutil.copy(archive[0], local)
    before = tree(data_dir)
    wrong = "0" * 32
    with pytest.raises(DataError) as info:
        DataReader.ensure_cifar10(str(data_dir), True, md5=wrong, log=lambda line: None)
    msg = str(info.value)
    assert str(local) in msg and archive[1] in msg and wrong in msg
    assert "delete it" in msg and "replace it" in msg
    assert tree(data_dir) == before


# ------------------------------------------------------------------ --data_dir that is a file

def test_data_dir_that_is_a_file_is_refused_and_kept(tmp_path):
    path = tmp_path / "data"
    path.write_text("mine")
    for call in (lambda: DataReader.ensure_cifar10(str(path), True, "http://127.0.0.1:9/x.tar.gz"),
                 lambda: DataReader.download_cifar10(str(path), "http://127.0.0.1:9/x.tar.gz"),
                 lambda: DataReader.load_data(str(path))):
        with pytest.raises(DataError) as info:
            call()
        assert str(info.value).startswith(f"--data_dir {path} is a file, not a folder;")
    assert os.listdir(tmp_path) == ["data"] and path.read_text() == "mine"


# ------------------------------------------------------------------ the command line

def _train_args(data_dir, modeldir, url):
    return ["--mode", "train", "--data_dir", str(data_dir), "--download_url", url,
            "--max_epoch", "1", "--resnet_size", "1", "--first_num_filters", "4",
            "--batch_size", "8", "--split_index", "40", "--modeldir", str(modeldir),
            "--device", "cpu", "--eval_batch_size", "100"]


def test_cli_downloads_then_trains(tmp_path, server, monkeypatch, capsys):
    root, base = server
    md5 = make_archive(root / "cifar.tar.gz", tmp_path / "staging", n_per_batch=10, n_test=4)
    url = f"{base}/cifar.tar.gz"
    real_download = DataReader.download_dataset
    calls = []

    # The CLI asks for the official MD5 (checked below); our look-alike archive needs its own.
    def download_with_test_md5(data_dir, dataset, url, *args, **kwargs):
        calls.append((data_dir, dataset, url, args, kwargs))
        return real_download(data_dir, dataset, url, md5, progress=False)

    monkeypatch.setattr(trainer.data.download, "download_dataset", download_with_test_md5)
    data_dir, modeldir = tmp_path / "data", tmp_path / "model"
    rc = cli.main(_train_args(data_dir, modeldir, url))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert calls == [(str(data_dir), "cifar10", url, (PUBLISHED_MD5,), {})]
    assert url in captured.err  # it says what it fetches
    assert DataReader.has_cifar10(str(data_dir))
    assert os.path.isfile(modeldir / "model-1.ckpt")
    assert "on 40 images, validating on 10" in captured.out
    assert not [f for f in os.listdir(data_dir) if f.endswith(".part")]

    # With the data in place, nothing is downloaded again.
    calls.clear()
    dataset.ensure_data(configure.Config(data_dir=str(data_dir), download_url=url))
    assert calls == []


def test_cli_refuses_an_archive_that_is_not_the_official_one(tmp_path, server, capsys):
    root, base = server
    make_archive(root / "cifar.tar.gz", tmp_path / "staging", n_per_batch=2, n_test=2)
    data_dir = tmp_path / "data"
    rc = cli.main(_train_args(data_dir, tmp_path / "model", f"{base}/cifar.tar.gz"))
    err = capsys.readouterr().err
    assert rc == 1
    assert "MD5" in err and configure.CIFAR10_MD5 in err
    assert not data_dir.exists()  # the folder it made is gone again: no .part, nothing unpacked
    assert not os.path.exists(tmp_path / "model" / "model-1.ckpt")


def test_cli_unreachable_mirror_fails_with_instructions(tmp_path, capsys):
    url = f"http://127.0.0.1:{closed_port()}/cifar.tar.gz"
    data_dir = tmp_path / "data"
    rc = cli.main(_train_args(data_dir, tmp_path / "model", url))
    err = capsys.readouterr().err
    assert rc == 1
    lines = err.strip().splitlines()
    assert lines[0].startswith("CIFAR-10 not found in") and url in lines[0]
    assert lines[-1].startswith("error: could not download CIFAR-10 from " + url)
    assert os.path.join(str(data_dir), "cifar-10-batches-py") in err
    assert "Traceback" not in err


def test_failed_download_into_an_existing_folder_keeps_what_was_there(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "notes.txt").write_text("mine")
    with pytest.raises(DataError):
        DataReader.download_cifar10(str(data_dir), "http://127.0.0.1:9/cifar.tar.gz", progress=False)
    assert os.listdir(data_dir) == ["notes.txt"]
    assert (data_dir / "notes.txt").read_text() == "mine"


def test_cli_no_download_with_empty_data_dir_exits_with_one_clear_sentence(tmp_path):
    data_dir = tmp_path / "empty"
    data_dir.mkdir()
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "main.py"), "--mode", "train", "--data_dir", str(data_dir),
         "--no_download", "--modeldir", str(tmp_path / "model"),
         "--download_url", f"http://127.0.0.1:{closed_port()}/never.tar.gz"],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: ") and str(data_dir) in line
    assert "no CIFAR-10" in line and "--no_download" in line
    assert line.rstrip().endswith(".") and line.count(". ") == 0  # one sentence
    assert os.listdir(data_dir) == []
    assert not os.path.exists(tmp_path / "model")


def test_cli_data_dir_that_is_a_file_exits_with_one_line(tmp_path, capsys):
    path = tmp_path / "data"
    path.write_text("mine")
    url = f"http://127.0.0.1:{closed_port()}/x.tar.gz"
    rc = cli.main(_train_args(path, tmp_path / "model", url))
    err = capsys.readouterr().err
    assert rc == 1
    assert err.strip().splitlines() == [f"error: --data_dir {path} is a file, not a folder; pass "
                                        f"the folder that holds (or is to hold) cifar-10-batches-py."]
    assert path.read_text() == "mine"


def test_cli_no_download_with_a_local_archive_of_another_md5_exits_with_one_line(tmp_path,
                                                                                   archive, capsys):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    local = data_dir / "cifar-10-python.tar.gz"
    shutil.copy(archive[0], local)
    rc = cli.main(_train_args(data_dir, tmp_path / "model", f"http://127.0.0.1:{closed_port()}/x")
                  + ["--no_download"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {local} has MD5 {archive[1]}, not {PUBLISHED_MD5}")
    assert lines[0].count(". ") == 0 and lines[0].endswith(".")  # one sentence
    assert os.listdir(data_dir) == ["cifar-10-python.tar.gz"]
    assert local.read_bytes() == archive[0].read_bytes()
