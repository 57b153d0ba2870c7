"""`captioner data download`: fetch public dataset archives, resumably, checked, extracted safely.

Offline it fails fast and says which files to put where, so a user can bring them by hand.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from captioner.errors import CaptionerError

CHUNK = 1 << 20
CONNECT_TIMEOUT_S = 15


@dataclass(frozen=True)
class Archive:
    """One file to fetch: where from, and the MD5 its publisher's mirrors agree on (None when unpublished)."""

    url: str
    md5: str | None = None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


FLICKR8K = "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/"
COCO = "http://images.cocodataset.org/"
DOWNLOADS: dict[str, list[Archive]] = {
    "flickr8k": [Archive(FLICKR8K + "Flickr8k_text.zip", "bf6c1abcb8e4a833b7f922104de18627"),
                 Archive(FLICKR8K + "Flickr8k_Dataset.zip", "f18a1e2920de5bd84dae7cf08ec78978")],
    "coco": [Archive(COCO + "annotations/annotations_trainval2014.zip"), Archive(COCO + "zips/train2014.zip"),
             Archive(COCO + "zips/val2014.zip")],
    "flickr30k": [],  # distributed only after accepting its terms: no public archive to fetch
}
MANUAL = {
    "flickr8k": "Flickr8k_text.zip and Flickr8k_Dataset.zip, unzipped into {dir} (so that {dir}/Flickr8k.token.txt "
                "and {dir}/Flicker8k_Dataset/ exist)",
    "coco": "annotations_trainval2014.zip, train2014.zip and val2014.zip, unzipped into {dir} (so that "
            "{dir}/annotations/captions_train2014.json and {dir}/train2014/ exist)",
    "flickr30k": "the Flickr30k images (request them from the dataset's authors or a Kaggle mirror) into "
                 "{dir}/flickr30k_images/, with results_20130124.token or results.csv and, for the standard "
                 "split, Karpathy's dataset_flickr30k.json in {dir}",
}


def download_dataset(name: str, data_dir: Path, base_url: str | None = None) -> Path:
    """Fetch and extract every archive of `name`; `base_url` replaces the publisher's (for mirrors and tests)."""
    if name not in DOWNLOADS:
        raise CaptionerError(f"no download for {name!r}; choose one of {', '.join(sorted(DOWNLOADS))}")
    manual = MANUAL[name].format(dir=data_dir)
    archives = DOWNLOADS[name]
    if not archives:
        raise CaptionerError(f"{name} cannot be downloaded automatically. Put {manual}.")
    if base_url:
        archives = [Archive(base_url.rstrip("/") + "/" + archive.filename, archive.md5) for archive in archives]
    return download_archives(archives, data_dir, manual)


def download_archives(archives: list[Archive], data_dir: Path, manual: str = "") -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    downloads = data_dir / "downloads"
    for archive in archives:
        marker = data_dir / f".extracted-{archive.filename}"
        if marker.exists():
            continue
        path = downloads / archive.filename
        if not path.exists():
            fetch(archive, path, manual)
        extract_zip(path, data_dir)
        marker.touch()
    return data_dir


def fetch(archive: Archive, path: Path, manual: str = "") -> None:
    """Download to `path.part`, resuming a partial download, then check size and MD5 before renaming."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(archive.url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # already complete
            response = None
        else:
            raise CaptionerError(f"download of {archive.url} failed: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        hint = f" Without a network, put {manual}." if manual else ""
        raise CaptionerError(f"cannot reach {archive.url} ({reason}).{hint}") from error
    if response is not None:
        with response:
            resumed = response.status == 206
            if not resumed:
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with open(partial, "ab" if resumed else "wb") as out, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=archive.filename
            ) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        if total is not None and partial.stat().st_size != total:
            raise CaptionerError(f"download of {archive.url} stopped at {partial.stat().st_size} of {total} bytes; "
                                 "run the command again to resume")
    if archive.md5 and md5sum(partial) != archive.md5:
        partial.unlink()
        raise CaptionerError(f"{archive.filename} is corrupt (MD5 does not match {archive.md5}); deleted it, "
                             "run the command again to download it anew")
    os.replace(partial, path)


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def extract_zip(path: Path, target: Path) -> None:
    """Extract, but refuse the whole archive if any member would land outside `target`."""
    root = target.resolve()
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.filename.startswith("__MACOSX")]
            for member in members:
                destination = (root / member.filename).resolve()
                if destination != root and root not in destination.parents:
                    raise CaptionerError(f"{path} holds {member.filename!r}, which would be written outside "
                                         f"{target}; refusing to extract it")
            for member in tqdm(members, desc=f"extracting {path.name}", unit="file"):
                archive.extract(member, root)
    except zipfile.BadZipFile as error:
        raise CaptionerError(f"{path} is not a valid zip archive ({error}); delete it and download it again") from error
