"""Carry a dataset folder to a machine that takes at most 64 MiB of files per transfer: lossless,
in parts, every file checked on arrival.

    python benchmarks/gpu_data.py pack /work/shared/data/cifar-100-python gpu_parts --part-mb 60
    python benchmarks/gpu_data.py unpack gpu_parts DEST        # DEST/cifar-100-python/{train,test,meta,SHA256SUMS}
    python benchmarks/gpu_data.py check DEST                   # every file against its SHA256SUMS again

``pack`` checks every file of the folder against the folder's ``SHA256SUMS`` (``sha256sum`` format),
writes them and ``SHA256SUMS`` as one tar stream compressed with xz (a byte-delta filter before
LZMA2: neighbouring pixels differ little), and cuts the compressed stream into ``part-000``,
``part-001``, ... of at most ``--part-mb`` MiB each. Each part describes itself: a first line
``INTRAKD-PART 1``, a second line of JSON (its index, the number of parts, the sha256 of its payload
and of the whole stream, the dataset folder's name and its ``SHA256SUMS`` text), then its payload.

``unpack`` reads every part of a folder (all must be there, from one ``pack``), checks each payload's
sha256 and the whole stream's, decompresses and extracts the regular files into a temporary folder
beside DEST, checks every file named in ``SHA256SUMS`` (and the extracted ``SHA256SUMS`` itself)
against the text carried in the parts' headers, and only then renames the folder into place. Any
mismatch, a missing, extra or repeated part, a member outside the folder: it refuses (exit 1) and
leaves DEST as it was. By hand, without this script: strip the two header lines of each part
(``tail -n +3``), concatenate them in order, then ``xz -d | tar x``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

MAGIC = b"INTRAKD-PART 1\n"
SUMS = "SHA256SUMS"
FILTERS = [{"id": lzma.FILTER_DELTA, "dist": 1}, {"id": lzma.FILTER_LZMA2, "preset": 6}]
CHUNK = 1 << 20
HEADER_ROOM = 4096
"""Bytes kept free in each part for its two header lines."""


class PartsError(ValueError):
    """Parts or files that do not check out."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_sums(text: str) -> dict[str, str]:
    """``{file name: sha256}`` of a ``SHA256SUMS`` text; only plain names in the folder are allowed."""
    sums: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        name = name.lstrip("*")
        if len(digest) != 64 or not name or "/" in name or name in (".", "..", SUMS):
            raise PartsError(f"{SUMS}: cannot read the line {line!r} (expected '<sha256>  <file name>')")
        sums[name] = digest.lower()
    if not sums:
        raise PartsError(f"{SUMS} names no file")
    return sums


def dataset_folder(root: Path) -> Path:
    """``root`` if it holds ``SHA256SUMS``, else its single subfolder that does (e.g. cifar-100-python)."""
    if (root / SUMS).is_file():
        return root
    found = [p.parent for p in sorted(root.glob(f"*/{SUMS}"))]
    if len(found) != 1:
        raise PartsError(f"{root}: expected a {SUMS} file in it or in exactly one subfolder, found {len(found)}")
    return found[0]


def check_files(folder: Path, sums: dict[str, str]) -> None:
    """Every file of ``sums`` present in ``folder`` with its sha256; raises :class:`PartsError`."""
    for name, digest in sums.items():
        path = folder / name
        if not path.is_file():
            raise PartsError(f"{path}: missing ({SUMS} names it)")
        actual = sha256_file(path)
        if actual != digest:
            raise PartsError(f"{path}: sha256 {actual[:16]}... differs from {SUMS}'s {digest[:16]}...")


# ---------------------------------------------------------------- pack
class PartWriter(io.RawIOBase):
    """A write-only stream cut into payload files of at most ``limit`` bytes (headers added later)."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder, self.limit = folder, limit
        self.paths: list[Path] = []
        self.sizes: list[int] = []
        self.total = hashlib.sha256()
        self.file: BinaryIO | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        self.total.update(view)
        while len(view):
            if self.file is None or self.sizes[-1] == self.limit:
                self._next()
            assert self.file is not None
            room = self.limit - self.sizes[-1]
            self.file.write(view[:room])
            self.sizes[-1] += min(room, len(view))
            view = view[room:]
        return len(data)

    def _next(self) -> None:
        if self.file is not None:
            self.file.close()
        self.paths.append(self.folder / f".payload-{len(self.paths):03d}")
        self.sizes.append(0)
        self.file = self.paths[-1].open("wb")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        super().close()


def pack(data_root: Path, parts_dir: Path, part_mb: float = 60.0) -> list[Path]:
    """Check, compress and split the dataset folder under ``data_root`` into ``parts_dir``; return the parts."""
    folder = dataset_folder(data_root)
    sums_text = (folder / SUMS).read_text()
    sums = read_sums(sums_text)
    check_files(folder, sums)
    limit = int(part_mb * 2**20) - HEADER_ROOM
    if limit < 1:
        raise PartsError(f"--part-mb {part_mb} leaves no room for data (each part has a header of up to "
                         f"{HEADER_ROOM} bytes)")
    parts_dir.mkdir(parents=True, exist_ok=True)
    if any(parts_dir.glob("part-*")):
        raise PartsError(f"{parts_dir} already holds parts: remove them or choose another folder")
    writer = PartWriter(parts_dir, limit)
    with lzma.open(writer, "wb", format=lzma.FORMAT_XZ, filters=FILTERS) as xz, \
            tarfile.open(fileobj=xz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name in [*sums, SUMS]:
            tar.add(folder / name, arcname=f"{folder.name}/{name}", recursive=False, filter=_plain)
    writer.close()
    stream = writer.total.hexdigest()
    parts = []
    for index, payload in enumerate(writer.paths):
        header = {"index": index, "parts": len(writer.paths), "payload_bytes": writer.sizes[index],
                  "payload_sha256": sha256_file(payload), "stream_sha256": stream,
                  "folder": folder.name, "sha256sums": sums_text}
        line = json.dumps(header, sort_keys=True).encode() + b"\n"
        assert len(MAGIC) + len(line) <= HEADER_ROOM
        part = parts_dir / f"part-{index:03d}"
        with part.open("wb") as out, payload.open("rb") as src:
            out.write(MAGIC + line)
            shutil.copyfileobj(src, out, CHUNK)
        payload.unlink()
        parts.append(part)
    return parts


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Members without owner names or ids (the same archive from any account)."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


# ---------------------------------------------------------------- unpack
def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """A part's header and the offset of its payload."""
    with path.open("rb") as f:
        magic = f.read(len(MAGIC))
        line = f.readline(HEADER_ROOM)
    if magic != MAGIC or not line.endswith(b"\n"):
        raise PartsError(f"{path}: not a part written by gpu_data.py pack (no '{MAGIC.decode().strip()}' header)")
    try:
        header = json.loads(line)
    except json.JSONDecodeError as err:
        raise PartsError(f"{path}: unreadable header ({err})") from err
    return header, len(MAGIC) + len(line)


def check_parts(parts_dir: Path) -> tuple[list[tuple[Path, int]], dict[str, Any]]:
    """The parts of ``parts_dir`` in order, each with its payload offset, and their common header;
    every payload's and the whole stream's sha256 checked."""
    paths = sorted(p for p in parts_dir.glob("part-*") if p.is_file())
    if not paths:
        raise PartsError(f"{parts_dir}: no part-* files")
    headers = [(path, *read_header(path)) for path in paths]
    first = headers[0][1]
    common = ("parts", "stream_sha256", "folder", "sha256sums")
    for path, header, _ in headers:
        if any(header.get(k) != first.get(k) for k in common):
            raise PartsError(f"{path}: from another pack than {headers[0][0].name} (headers differ)")
    indices = sorted(header["index"] for _, header, _ in headers)
    if indices != list(range(first["parts"])):
        missing = sorted(set(range(first["parts"])) - set(indices))
        raise PartsError(f"{parts_dir}: expected parts 0..{first['parts'] - 1}, found indices {indices}"
                         + (f" (missing {missing})" if missing else " (repeated or extra)"))
    headers.sort(key=lambda h: h[1]["index"])
    stream = hashlib.sha256()
    for path, header, offset in headers:
        digest, size = hashlib.sha256(), 0
        for chunk in _payload(path, offset):
            digest.update(chunk)
            stream.update(chunk)
            size += len(chunk)
        if size != header["payload_bytes"] or digest.hexdigest() != header["payload_sha256"]:
            raise PartsError(f"{path}: payload damaged ({size} bytes, sha256 {digest.hexdigest()[:16]}...; "
                             f"its header says {header['payload_bytes']} bytes, {header['payload_sha256'][:16]}...)")
    if stream.hexdigest() != first["stream_sha256"]:
        raise PartsError(f"{parts_dir}: the joined parts' sha256 differs from the one recorded at pack time")
    return [(path, offset) for path, _, offset in headers], first


def _payload(path: Path, offset: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        f.seek(offset)
        while chunk := f.read(CHUNK):
            yield chunk


class JoinedPayloads(io.RawIOBase):
    """The parts' payloads read as one stream."""

    def __init__(self, parts: list[tuple[Path, int]]) -> None:
        self.chunks = (chunk for path, offset in parts for chunk in _payload(path, offset))
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self.pending:
            self.pending = next(self.chunks, b"")
            if not self.pending:
                return 0
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


def unpack(parts_dir: Path, dest: Path) -> Path:
    """Join, decompress, extract and check the parts of ``parts_dir`` into ``dest/<folder>``; return it."""
    parts, header = check_parts(parts_dir)
    sums_text, name = header["sha256sums"], header["folder"]
    sums = read_sums(sums_text)
    if not name or "/" in name or name in (".", ".."):
        raise PartsError(f"{parts_dir}: unusable folder name {name!r} in the headers")
    target = dest / name
    if target.exists():
        raise PartsError(f"{target} already exists: remove it first (nothing was changed)")
    dest.mkdir(parents=True, exist_ok=True)
    allowed = {f"{name}/{file}" for file in [*sums, SUMS]}
    with tempfile.TemporaryDirectory(prefix=".unpack-", dir=dest) as tmp:
        work = Path(tmp)
        stream = io.BufferedReader(JoinedPayloads(parts), CHUNK)
        with lzma.open(stream, "rb") as xz, tarfile.open(fileobj=xz, mode="r|") as tar:
            for member in tar:
                if member.name not in allowed or not member.isfile():
                    raise PartsError(f"{parts_dir}: unexpected archive member {member.name!r}")
                source = tar.extractfile(member)
                assert source is not None
                path = work / member.name
                path.parent.mkdir(exist_ok=True)
                with path.open("wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)
        if not (work / name / SUMS).is_file() or (work / name / SUMS).read_text() != sums_text:
            raise PartsError(f"{parts_dir}: the archive's {SUMS} differs from the one in the parts' headers")
        check_files(work / name, sums)
        (work / name).rename(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="check, compress and split DATA_ROOT's dataset folder into PARTS_DIR")
    p.add_argument("data_root", type=Path, help="a folder holding SHA256SUMS (or with one such subfolder)")
    p.add_argument("parts_dir", type=Path)
    p.add_argument("--part-mb", type=float, default=60.0, help="largest part, MiB (default 60)")
    p = sub.add_parser("unpack", help="join, decompress and check PARTS_DIR into DEST/<folder>")
    p.add_argument("parts_dir", type=Path)
    p.add_argument("dest", type=Path)
    p = sub.add_parser("check", help="check every file of DATA_ROOT's dataset folder against its SHA256SUMS")
    p.add_argument("data_root", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            parts = pack(args.data_root, args.parts_dir, args.part_mb)
            for part in parts:
                print(f"{part}  {part.stat().st_size / 2**20:.1f} MiB")
        elif args.command == "unpack":
            target = unpack(args.parts_dir, args.dest)
            print(f"{target}: every file matches {SUMS}")
        else:
            folder = dataset_folder(args.data_root)
            check_files(folder, read_sums((folder / SUMS).read_text()))
            print(f"{folder}: every file matches {SUMS}")
    except (PartsError, OSError, lzma.LZMAError, tarfile.TarError) as err:
        print(f"gpu_data.py {args.command}: refused: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
