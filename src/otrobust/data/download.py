"""Fetch a dataset's official files, check their published md5, and unpack them into the layout
the readers expect. Every file is staged in a temporary folder under ``root`` and moved into place
only once all of them are verified and unpacked, so a failed download leaves nothing behind."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from otrobust.errors import OtrobustError

TIMEOUT_S = 30
CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    """Where a dataset's files live, their md5s, and how to unpack them under ``root / target``."""

    base_url: str
    files: tuple[tuple[str, str], ...]  # (file name, md5 of the file as published)
    unpack: str  # "tar": a .tar.gz holding the folder `target`; "copy": as is; "gunzip": .gz -> raw
    target: str
    expect: tuple[str, ...] = ()  # for "tar": the files the unpacked folder must hold


_IDX = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz")

REMOTES: dict[str, Remote] = {
    "cifar10": Remote("https://www.cs.toronto.edu/~kriz/",
                      (("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),), "tar",
                      "cifar-10-batches-py",
                      ("batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch")),
    "cifar100": Remote("https://www.cs.toronto.edu/~kriz/",
                       (("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),), "tar",
                       "cifar-100-python", ("meta", "train", "test")),
    "svhn": Remote("http://ufldl.stanford.edu/housenumbers/",
                   (("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
                    ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3")), "copy", "."),
    "mnist": Remote("https://ossci-datasets.s3.amazonaws.com/mnist/",
                    tuple(zip(_IDX, ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                                     "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
                              strict=True)), "gunzip", "MNIST/raw"),
    "fashion-mnist": Remote("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                            tuple(zip(_IDX, ("8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                             "25c81989df183df01b3e8a0aad5dffbe",
                                             "bef4ecab320f06d8554ea6380940ec79",
                                             "bb300cfdad3c16e7a12a480ee83cd310"), strict=True)),
                            "gunzip", "FashionMNIST/raw"),
}


def _outputs(remote: Remote) -> list[str]:
    """The names, under ``root / target``, that exist once the dataset is in place."""
    if remote.unpack == "tar":
        return list(remote.expect)
    if remote.unpack == "gunzip":
        return [name.removesuffix(".gz") for name, _ in remote.files]
    return [name for name, _ in remote.files]


def _is_url(source: str) -> bool:
    return urllib.parse.urlparse(source).scheme in ("http", "https", "ftp", "file")


def _locations(name: str, remote: Remote, source: str | None) -> list[str]:
    """One URL or local path per file of ``remote``: the official mirror unless ``source`` is given."""
    names = [n for n, _ in remote.files]
    if source is None:
        return [remote.base_url + n for n in names]
    if _is_url(source):
        if source.endswith("/"):
            return [source + n for n in names]
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            return [str(path / n) for n in names]
        if not path.is_file():
            raise OtrobustError(f"download source {source!r} is neither a file, a folder nor a URL")
    if len(names) > 1:
        raise OtrobustError(f"{name} has {len(names)} files ({', '.join(names)}): give source as a folder "
                            "or a URL ending in '/' that holds them")
    return [source]


def _manual_hint(name: str, remote: Remote, root: Path) -> str:
    files = ", ".join(n for n, _ in remote.files)
    how = {"tar": f"unpack it in {str(root)!r} (tar xzf)",
           "copy": f"put them in {str(root / remote.target)!r}",
           "gunzip": f"gunzip them into {str(root / remote.target)!r}"}[remote.unpack]
    return f"to install {name} by hand, fetch {files} from {remote.base_url} and {how}"


def _copy_hashing(src, dest: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(dest, "wb") as out:
        for chunk in iter(lambda: src.read(CHUNK), b""):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _fetch(location: str, dest: Path, hint: str) -> str:
    """Copy ``location`` (URL or path) to ``dest``; return the md5 of its bytes."""
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme == "file" or not _is_url(location):
        path = Path(urllib.request.url2pathname(parsed.path)) if parsed.scheme == "file" else Path(location)
        if not path.is_file():
            raise OtrobustError(f"download source file {str(path)!r} does not exist")
        with open(path, "rb") as src:
            return _copy_hashing(src, dest)
    try:
        with urllib.request.urlopen(location, timeout=TIMEOUT_S) as response:
            return _copy_hashing(response, dest)
    except urllib.error.HTTPError as exc:
        raise OtrobustError(f"download of {location} failed: the server answered HTTP {exc.code}; "
                            f"{hint}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise OtrobustError(f"download of {location} failed ({reason}); this machine appears to be offline "
                            f"or cannot reach the server; {hint}") from None


def _check_members(archive: tarfile.TarFile, path: Path) -> None:
    """Refuse archives with absolute paths, '..' components, links or device files."""
    for member in archive.getmembers():
        parts = Path(member.name).parts
        if member.name.startswith(("/", "\\")) or ".." in parts or not (member.isfile() or member.isdir()):
            raise OtrobustError(f"refusing to unpack {str(path)!r}: unsafe entry {member.name!r}")


def _untar(path: Path, dest: Path) -> None:
    try:
        with tarfile.open(path, "r:*") as archive:
            _check_members(archive, path)
            if hasattr(tarfile, "data_filter"):
                archive.extractall(dest, filter="data")
            else:  # Python without extraction filters; members were checked above
                archive.extractall(dest)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise OtrobustError(f"cannot unpack {str(path)!r} (corrupt archive?): {exc}") from None


def _gunzip(path: Path, dest: Path) -> None:
    try:
        with gzip.open(path) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK)
    except (OSError, EOFError, zlib.error) as exc:
        raise OtrobustError(f"cannot decompress {str(path)!r} (corrupt file?): {exc}") from None


def _unpack(remote: Remote, fetched: list[Path], staging: Path) -> list[tuple[Path, str]]:
    """Unpack the verified files inside ``staging``; return (staged path, final name under target)."""
    if remote.unpack == "copy":
        return [(p, p.name) for p in fetched]
    if remote.unpack == "gunzip":
        out = []
        for p in fetched:
            raw = staging / p.name.removesuffix(".gz")
            _gunzip(p, raw)
            out.append((raw, raw.name))
        return out
    extracted = staging / "extracted"
    _untar(fetched[0], extracted)
    folder = extracted / remote.target
    missing = [n for n in remote.expect if not (folder / n).is_file()]
    if missing:
        raise OtrobustError(f"archive {fetched[0].name!r} does not hold {remote.target}/ with "
                            f"{', '.join(missing)}; is it the right file?")
    return [(folder, "")]


def _install(remote: Remote, todo: list[tuple[str, str, str]], root: Path, target: Path, hint: str) -> None:
    """Fetch and verify every (file name, md5, location), unpack, then move the results into place."""
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
    try:
        fetched = []
        for file_name, expected, location in todo:
            dest = staging / file_name
            got = _fetch(location, dest, hint)
            if got != expected.lower():
                raise OtrobustError(f"checksum mismatch for {file_name} from {location}: md5 {got}, expected "
                                    f"{expected}; the file is corrupt or not the official one (nothing was "
                                    "installed)")
            fetched.append(dest)
        staged = _unpack(remote, fetched, staging)
        if remote.unpack != "tar":
            target.mkdir(parents=True, exist_ok=True)
        for path, final in staged:
            os.replace(path, target / final if final else target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download_dataset(name: str, root: Path, source: str | None = None, md5: str | None = None) -> Path:
    """Download ``name`` (cifar10, cifar100, svhn, mnist, fashion-mnist) into ``root``; return its folder.

    ``source`` replaces the official mirror: a URL (``file://`` included) or local path of the file
    itself for one-file datasets (CIFAR), or a folder / URL ending in ``/`` holding the standard
    file names. ``md5`` replaces the published checksum of a one-file dataset. Files already in
    place are not downloaded again. Pass ``root`` (or the returned folder) as the data directory.
    """
    if name not in REMOTES:
        raise OtrobustError(f"cannot download dataset {name!r}; choose one of: {', '.join(sorted(REMOTES))}")
    remote = REMOTES[name]
    if md5 is not None and len(remote.files) > 1:
        raise OtrobustError(f"md5 overrides the checksum of a one-file dataset; {name} has "
                            f"{len(remote.files)} files")
    root = Path(root).expanduser()
    target = root / remote.target
    wanted = [n for n in _outputs(remote) if not (target / n).is_file()]
    if not wanted:
        return target
    if remote.unpack == "tar" and target.exists() and any(target.iterdir()):
        raise OtrobustError(f"{str(target)!r} exists but lacks {', '.join(wanted)}; "
                            "remove it and download again")
    # A tar archive is fetched whole; of the other datasets, only the files not yet in place.
    todo = [(file_name, md5 or official, location) for (file_name, official), location in
            zip(remote.files, _locations(name, remote, source), strict=True)
            if remote.unpack == "tar" or file_name.removesuffix(".gz") in wanted]
    _install(remote, todo, root, target, _manual_hint(name, remote, root))
    return target
