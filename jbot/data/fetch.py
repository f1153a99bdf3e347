"""Download the real JetNet (30 particles) from its Zenodo record, with md5 checks (``jbot data fetch``).

We talk to Zenodo directly instead of through the ``jetnet`` package: jetnet 0.2.5's ``getData`` contacts
Zenodo even for files already on disk, and its import chain (energyflow -> wasserstein) breaks on numpy 2.
The record's API lists each file with its md5; a file already present with the right md5 is kept.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from jbot.data.classes import CLASSES
from jbot.data.jetnet import DataError
from jbot.io import atomic_write, file_hash

ZENODO_RECORD = 6975118  # JetNet, 30 particles (doi 10.5281/zenodo.6975118)
DEFAULT_API = "https://zenodo.org/api/records"


def _open(url: str, timeout: float):  # type: ignore[no-untyped-def]
    try:
        return urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"cannot reach Zenodo at {url} ({reason}); JetNet needs internet access. "
            "Without it, make jets locally with `jbot data generate`."
        ) from None


def record_files(record: int = ZENODO_RECORD, timeout: float = 10.0) -> dict[str, dict]:
    """{file name: {"url": ..., "md5": ..., "size": ...}} from the record's API (``JBOT_ZENODO_API`` to mirror)."""
    api = os.environ.get("JBOT_ZENODO_API", DEFAULT_API)
    with _open(f"{api}/{record}", timeout) as resp:
        meta = json.load(resp)
    out = {}
    for item in meta.get("files", []):
        name = item.get("key") or item.get("filename")
        checksum = str(item.get("checksum", ""))
        links = item.get("links", {})
        out[name] = {
            "url": links.get("self") or links.get("download"),
            "md5": checksum.split("md5:")[-1],
            "size": item.get("size"),
        }
    return out


def fetch_jetnet(
    out_dir: str | Path,
    classes: tuple[str, ...] = CLASSES,
    timeout: float = 10.0,
    on_progress: Callable[[str, int, int | None], None] | None = None,
) -> dict[str, Path]:
    """Download ``{class}.hdf5`` into ``out_dir``; each file is written to a temp name and renamed after its
    md5 matches, so an interrupted download never leaves a file that looks complete."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = record_files(timeout=timeout)
    written = {}
    for cls in classes:
        name = f"{cls}.hdf5"
        if name not in files:
            raise DataError(f"Zenodo record {ZENODO_RECORD} has no file {name} (it lists {sorted(files)})")
        meta = files[name]
        dest = out_dir / name
        if dest.is_file() and file_hash(dest, "md5") == meta["md5"]:
            written[cls] = dest
            continue

        def download(tmp: Path, name: str = name, meta: dict = meta) -> None:
            with tmp.open("wb") as f, _open(meta["url"], timeout) as resp:
                done = 0
                while True:
                    try:
                        block = resp.read(1 << 20)
                    except OSError as exc:  # the connection, not the disk
                        raise DataError(f"{name}: download from Zenodo failed ({exc}); try again") from None
                    if not block:
                        break
                    f.write(block)
                    done += len(block)
                    if on_progress is not None:
                        on_progress(name, done, meta["size"])
            got = file_hash(tmp, "md5")
            if got != meta["md5"]:
                raise DataError(f"{name}: md5 {got} does not match Zenodo's {meta['md5']}; try again")

        written[cls] = atomic_write(dest, download, suffix=".part")
    return written
