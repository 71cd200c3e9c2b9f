"""``python -m trainer download-corpus``: fetch the script corpus and check every file's sha256.

The files come from the public repository github.com/maxisses/GoT-Mining at a fixed commit, so their
checksums never change. Each file is written to a temporary file in the destination directory and renamed
into place only after its checksum matches: a failed or tampered download leaves nothing behind. A file
already present with the right checksum is skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.envargs import env_flag
from trainer.errors import UserError

SOURCE_REPOSITORY = "https://github.com/maxisses/GoT-Mining"
SOURCE_COMMIT = "070b2ccbfeae3d2a2be8557462c8bff58f9ccf33"
DEFAULT_BASE_URL = f"https://raw.githubusercontent.com/maxisses/GoT-Mining/{SOURCE_COMMIT}"
DEFAULT_DEST = Path("data/corpus")
TIMEOUT_S = 60.0  # per network read; a stalled connection fails instead of hanging forever
CHUNK_BYTES = 1 << 16


@dataclass(frozen=True)
class CorpusFile:
    """One file to fetch: its local name, its path under the base URL, and its known sha256."""

    name: str
    remote_path: str
    sha256: str


CORPUS_FILES = (
    CorpusFile(
        "Game_of_Thrones_Script_MD.csv",
        "Game_of_Thrones_Script_MD.csv",
        "704046647fe54923db112412179896b5aae870e7ab385705ee57deac43a7d3c0",
    ),
    CorpusFile(
        "Game_of_Thrones_Script.csv",
        "Game_of_Thrones_Script.csv",
        "055451aaee8fe0e2805744bd0d3498a8633e3e5426ac80aa8925a5eb36f579da",
    ),
    CorpusFile(
        "GoT_textonly.txt",
        "gpt2-got/gpt2-model-training/GoT_textonly.txt",
        "808db957ee08da78ba64542078eb5ec2a17e71516424a5a7d4af0534391c844a",
    ),
)


class DownloadError(UserError):
    """A file that could not be fetched or did not match its checksum."""


def download_corpus(
    dest: Path,
    base_url: str = DEFAULT_BASE_URL,
    files: Sequence[CorpusFile] | None = None,
    timeout: float = TIMEOUT_S,
) -> list[tuple[str, str]]:
    """Fetch ``files`` (default: the corpus) into ``dest``; returns (name, "skipped" | "downloaded") each."""
    files = CORPUS_FILES if files is None else files
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the directory {dest}: {exc.strerror or exc}.") from exc
    results = []
    for spec in files:
        target = dest / spec.name
        if target.is_file() and file_sha256(target) == spec.sha256:
            results.append((spec.name, "skipped"))
            continue
        _fetch_verified(f"{base_url.rstrip('/')}/{spec.remote_path}", target, spec.sha256, timeout)
        results.append((spec.name, "downloaded"))
    return results


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_verified(url: str, target: Path, expected: str, timeout: float) -> None:
    """Stream ``url`` into a temporary file beside ``target``; rename it into place only if it matches."""
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    temp = Path(temp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != expected:
            raise DownloadError(
                f"{url} has sha256 {digest.hexdigest()}, not the expected {expected}; "
                f"{target.name} was not saved."
            )
        os.replace(temp, target)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"could not download {url}: HTTP {exc.code} {exc.reason}.") from exc
    except urllib.error.URLError as exc:
        raise DownloadError(f"could not reach {url}: {exc.reason}.") from exc
    except (TimeoutError, OSError) as exc:
        raise DownloadError(f"could not download {url}: {exc.strerror or exc}.") from exc
    except ValueError as exc:  # a malformed --base-url ("unknown url type")
        raise DownloadError(f"cannot download {url!r}: {exc}.") from exc
    finally:
        temp.unlink(missing_ok=True)


def add_parser(subparsers: Any) -> None:
    """Register the ``download-corpus`` subcommand."""
    parser = subparsers.add_parser(
        "download-corpus",
        help="download the Game of Thrones scripts and check their checksums",
        description=f"Download the three corpus files from {SOURCE_REPOSITORY} (commit {SOURCE_COMMIT[:7]}) "
        "and verify each sha256; files already present with the right checksum are skipped.",
    )
    parser.add_argument(
        "--dest",
        type=Path,
        default=DEFAULT_DEST,
        metavar="DIR",
        help="directory to write the corpus files into [default: %(default)s]",
    )
    env_flag(
        parser,
        "--base-url",
        env="MAESTER_CORPUS_BASE_URL",
        default=DEFAULT_BASE_URL,
        metavar="URL",
        help="where the files are fetched from (a mirror with the same paths)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The ``download-corpus`` command."""
    for name, status in download_corpus(args.dest, args.base_url):
        if status == "skipped":
            print(f"{args.dest / name}: already present, checksum ok")
        else:
            print(f"{args.dest / name}: downloaded, checksum ok")
    return 0
