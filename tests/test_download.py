"""``download-corpus`` against a loopback HTTP server (no test touches the internet)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.corpus_factory import csv_text, make_rows, numbered_turns, text_form
from trainer import cli
from trainer.download import CORPUS_FILES, CorpusFile, DownloadError, download_corpus


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves files from a directory and remembers the paths requested."""

    requested: list[str]

    def do_GET(self) -> None:
        self.requested.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture
def server(tmp_path) -> Iterator[tuple[str, Path, list[str]]]:
    """(base URL, directory it serves, requested paths) of an HTTP server on 127.0.0.1."""
    root = tmp_path / "served"
    root.mkdir()
    requested: list[str] = []
    handler = type("Handler", (_Handler,), {"requested": requested})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/mirror", root, requested
    finally:
        httpd.shutdown()
        httpd.server_close()


def _serve(root: Path, remote_path: str, content: bytes) -> CorpusFile:
    """Put ``content`` at ``mirror/remote_path`` and return a spec with its true checksum."""
    target = root / "mirror" / remote_path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    return CorpusFile(Path(remote_path).name, remote_path, hashlib.sha256(content).hexdigest())


def _made_up_files(root: Path) -> list[CorpusFile]:
    rows = make_rows(episodes=2)
    return [
        _serve(root, "script.csv", csv_text(rows).encode()),
        _serve(root, "deep/folder/script.txt", text_form(numbered_turns(6)).encode()),
    ]


def test_downloads_files_and_checks_them(server, tmp_path):
    base_url, root, _ = server
    specs = _made_up_files(root)
    dest = tmp_path / "data" / "corpus"
    results = download_corpus(dest, base_url, specs)

    assert results == [("script.csv", "downloaded"), ("script.txt", "downloaded")]
    assert (dest / "script.csv").read_bytes() == (root / "mirror" / "script.csv").read_bytes()
    assert (dest / "script.txt").read_bytes() == (root / "mirror" / "deep/folder/script.txt").read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == ["script.csv", "script.txt"]  # no temp files left


def test_files_already_present_with_the_right_checksum_are_skipped(server, tmp_path):
    base_url, root, requested = server
    specs = _made_up_files(root)
    download_corpus(tmp_path / "dest", base_url, specs)
    requested.clear()

    assert download_corpus(tmp_path / "dest", base_url, specs) == [
        ("script.csv", "skipped"), ("script.txt", "skipped"),
    ]
    assert requested == []


def test_a_present_file_with_the_wrong_checksum_is_replaced(server, tmp_path):
    base_url, root, _ = server
    specs = _made_up_files(root)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "script.csv").write_text("stale", encoding="utf-8")

    assert download_corpus(dest, base_url, specs)[0] == ("script.csv", "downloaded")
    assert (dest / "script.csv").read_bytes() == (root / "mirror" / "script.csv").read_bytes()


def test_a_checksum_mismatch_is_refused_and_leaves_nothing(server, tmp_path):
    base_url, root, _ = server
    spec = _serve(root, "script.csv", b"tampered content")
    wrong = CorpusFile(spec.name, spec.remote_path, "0" * 64)
    dest = tmp_path / "dest"

    with pytest.raises(DownloadError) as info:
        download_corpus(dest, base_url, [wrong])
    assert str(info.value) == (
        f"{base_url}/script.csv has sha256 {spec.sha256}, not the expected {'0' * 64}; "
        "script.csv was not saved."
    )
    assert list(dest.iterdir()) == []


def test_a_missing_remote_file_is_one_sentence(server, tmp_path):
    base_url, _, _ = server
    spec = CorpusFile("gone.csv", "gone.csv", "0" * 64)
    with pytest.raises(DownloadError, match=r"^could not download .*/gone.csv: HTTP 404 File not found\.$"):
        download_corpus(tmp_path / "dest", base_url, [spec])
    assert list((tmp_path / "dest").iterdir()) == []


def test_an_unreachable_server_is_one_sentence(tmp_path):
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = CorpusFile("a.csv", "a.csv", "0" * 64)
    with pytest.raises(DownloadError, match=rf"^could not reach http://127\.0\.0\.1:{port}/a\.csv: .*\.$"):
        download_corpus(tmp_path / "dest", f"http://127.0.0.1:{port}", [spec], timeout=5)


def test_cli_refuses_files_that_are_not_the_published_corpus(server, tmp_path, monkeypatch, capsys):
    """The real checksums are built in: made-up files at the real paths are refused."""
    base_url, root, _ = server
    for spec in CORPUS_FILES:
        _serve(root, spec.remote_path, b"not the real script")
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("trainer.download", "trainer.prepare"))
    monkeypatch.setenv("MAESTER_CORPUS_BASE_URL", base_url)
    dest = tmp_path / "dest"

    status = cli.main(["download-corpus", "--dest", str(dest)])
    err = capsys.readouterr().err

    assert status == 2
    assert err.startswith(f"error: {base_url}/{CORPUS_FILES[0].remote_path} has sha256 ")
    assert err.rstrip().endswith(f"{CORPUS_FILES[0].name} was not saved.")
    assert list(dest.iterdir()) == []


def test_cli_reports_each_file(server, tmp_path, monkeypatch, capsys):
    base_url, root, _ = server
    specs = _made_up_files(root)
    monkeypatch.setattr("trainer.download.CORPUS_FILES", tuple(specs))
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("trainer.download", "trainer.prepare"))
    dest = tmp_path / "dest"

    assert cli.main(["download-corpus", "--dest", str(dest), "--base-url", base_url]) == 0
    assert cli.main(["download-corpus", "--dest", str(dest), "--base-url", base_url]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        f"{dest / 'script.csv'}: downloaded, checksum ok",
        f"{dest / 'script.txt'}: downloaded, checksum ok",
        f"{dest / 'script.csv'}: already present, checksum ok",
        f"{dest / 'script.txt'}: already present, checksum ok",
    ]


REAL_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


@pytest.mark.skipif(
    not REAL_CORPUS.is_dir(), reason="the real script corpus (../shared/corpus) is not present"
)
def test_built_in_checksums_match_the_published_corpus(server, tmp_path, monkeypatch, capsys):
    """Served from a loopback mirror at the published paths, the real files pass the built-in checks."""
    base_url, root, _ = server
    for spec in CORPUS_FILES:
        link = root / "mirror" / spec.remote_path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REAL_CORPUS / spec.name)
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("trainer.download", "trainer.prepare"))
    dest = tmp_path / "dest"

    assert cli.main(["download-corpus", "--dest", str(dest), "--base-url", base_url]) == 0
    assert sorted(p.name for p in dest.iterdir()) == sorted(spec.name for spec in CORPUS_FILES)
    assert all(line.endswith("downloaded, checksum ok") for line in capsys.readouterr().out.splitlines())
