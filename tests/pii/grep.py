"""Search every file of a directory for strings, reading inside what a byte grep cannot: parquet files (every
column, decoded) and tar members; everything else as raw bytes."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path


def _texts(path: Path) -> list[bytes]:
    data = path.read_bytes()
    found = [data]
    if path.suffix == ".parquet" or data[:4] == b"PAR1":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(data))
        except Exception:  # noqa: BLE001 - not a whole parquet file: its raw bytes were searched
            return found
        found.append(json.dumps(table.to_pylist(), default=lambda v: v.decode("latin-1") if isinstance(v, bytes)
                                else str(v), ensure_ascii=False).encode("utf-8"))
    if path.suffix == ".tar":
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    found.append(tar.extractfile(member).read())
    return found


def grep(root: Path, needles: list[str], skip: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """needle -> the files (relative to ``root``) holding it; symlinks are followed by what they point at, once."""
    hits: dict[str, list[str]] = {n: [] for n in needles}
    encoded = {n: n.encode("utf-8") for n in needles}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink() or not path.is_file() or relative.startswith(skip):
            continue
        for blob in _texts(path):
            for needle, raw in encoded.items():
                if raw in blob and relative not in hits[needle]:
                    hits[needle].append(relative)
    return hits
