"""Getting a data set's official archive into place: found in data_dir or downloaded, MD5 checked,
unpacked safely."""
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request

from configure import CIFAR10_MD5, CIFAR10_URL
from trainer.data.archive import safe_extract
from trainer.data.errors import DataError
from trainer.data.layout import data_set, has_dataset, refuse_file_as_data_dir


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _md5_of_file(path: str) -> str:
    digest = hashlib.md5()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror}); check its permissions.") from None
    return digest.hexdigest()


def ensure_dataset(data_dir: str, dataset: str = "cifar10", download: bool = True, url: str = None,
                   md5: str = None, log=_to_stderr) -> None:
    """Make sure data_dir holds the files of dataset ("cifar10" or "cifar100").

    Nothing happens if it does. Otherwise the official archive (``cifar-10-python.tar.gz``,
    ``cifar-100-python.tar.gz``) in data_dir, if there, is unpacked once its MD5 matches (no
    network needed; a mismatch is refused and the file kept); otherwise the archive is downloaded
    from url when download is on. url and md5 default to the official ones of dataset; an md5 of
    "" checks none. ``log`` gets one line saying which of these happens.
    """
    ds = data_set(dataset)
    url = ds.url if url is None else url
    md5 = ds.md5 if md5 is None else md5
    refuse_file_as_data_dir(data_dir, ds)
    if has_dataset(data_dir, dataset):
        return
    local = os.path.join(data_dir, ds.archive)
    if os.path.isfile(local):
        found = _md5_of_file(local)
        if md5 and found != md5:
            raise DataError(f"{local} has MD5 {found}, not {md5} as the official archive has; "
                            f"delete it, or replace it with the official {ds.archive}.")
        log(f"{ds.name} not found in {data_dir}; unpacking {local}")
        safe_extract(local, data_dir)
        return
    if not download:
        raise DataError(f"{data_dir} holds no {ds.name}; put the contents of {ds.archive} "
                        f"({ds.folder}/) there, or drop --no_download to fetch it.")
    log(f"{ds.name} not found in {data_dir}; downloading {url}")
    download_dataset(data_dir, dataset, url, md5)


def ensure_cifar10(data_dir: str, download: bool = True, url: str = CIFAR10_URL,
                   md5: str = CIFAR10_MD5, log=_to_stderr) -> None:
    """ensure_dataset for CIFAR-10."""
    ensure_dataset(data_dir, "cifar10", download, url, md5, log)


def download_cifar10(data_dir: str, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5,
                     progress: bool = None) -> None:
    """download_dataset for CIFAR-10."""
    download_dataset(data_dir, "cifar10", url, md5, progress)


def download_dataset(data_dir: str, dataset: str = "cifar10", url: str = None, md5: str = None,
                     progress: bool = None) -> None:
    """Fetch the archive of dataset into data_dir, check its MD5 and unpack it there; url and md5
    default to the official ones (an md5 of "" checks none)."""
    from tqdm import tqdm

    ds = data_set(dataset)
    url = ds.url if url is None else url
    md5 = ds.md5 if md5 is None else md5
    refuse_file_as_data_dir(data_dir, ds)
    created = not os.path.isdir(data_dir)
    try:
        try:
            os.makedirs(data_dir, exist_ok=True)
            fd, part = tempfile.mkstemp(prefix=f".{ds.archive[:-len('.tar.gz')]}.", suffix=".part",
                                        dir=data_dir)
        except OSError as e:
            raise DataError(f"cannot write to {data_dir} ({e.strerror}); choose a --data_dir you "
                            f"can write to.") from None
        try:
            digest = hashlib.md5()
            with os.fdopen(fd, "wb") as out:
                try:
                    with urllib.request.urlopen(url, timeout=60) as response:
                        total = int(response.headers.get("Content-Length") or 0) or None
                        with tqdm(total=total, unit="B", unit_scale=True, desc=ds.name,
                                  disable=None if progress is None else not progress) as bar:
                            for chunk in iter(lambda: response.read(1 << 20), b""):
                                out.write(chunk)
                                digest.update(chunk)
                                bar.update(len(chunk))
                except (urllib.error.URLError, OSError, ValueError) as e:
                    reason = getattr(e, "reason", None) or e
                    raise DataError(f"could not download {ds.name} from {url} ({reason}); download "
                                    f"{ds.archive} yourself and put it in {data_dir}, or unpack it "
                                    f"there so that {os.path.join(data_dir, ds.folder)} holds "
                                    f"{ds.contents}.") from None
            if md5 and digest.hexdigest() != md5:
                raise DataError(f"the file downloaded from {url} has MD5 {digest.hexdigest()}, not "
                                f"{md5}, and was discarded; try again, or put the official "
                                f"{ds.archive} in {data_dir} yourself.")
            safe_extract(part, data_dir, source=f"the archive from {url}")
        finally:
            if os.path.exists(part):
                os.remove(part)
    finally:
        if created and os.path.isdir(data_dir) and not os.listdir(data_dir):
            os.rmdir(data_dir)  # leave no trace of a failed first download
