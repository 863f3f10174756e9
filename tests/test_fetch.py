"""`graft data fetch` against a real HTTP server on loopback (never the internet): archives built
here in the datasets' own layouts, a connection dropped mid-file and resumed, a tampered file, a
path-traversal archive and a zip bomb."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import numpy as np
import pytest

from graft.cli import main
from graft.data import scan_dataset
from graft.data.archives import UnsafeArchiveError, unpack
from graft.data.download import ChecksumError, DownloadError, download
from graft.data.fetch import fetch_dataset


class Files(BaseHTTPRequestHandler):
    """GET with Range; ``drops[name]`` times, the connection is cut halfway through the body."""

    files: ClassVar[dict[str, bytes]] = {}
    drops: ClassVar[dict[str, int]] = {}
    ranges: ClassVar[list[str]] = []

    def do_GET(self):
        name = self.path.lstrip("/")
        if name not in self.files:
            self.send_error(404)
            return
        data = self.files[name]
        start = 0
        if "Range" in self.headers:
            self.ranges.append(self.headers["Range"])
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.drops.get(name, 0) > 0:
            self.drops[name] -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # cut: the client got half
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Files.files, Files.drops, Files.ranges = {}, {}, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", Files
    httpd.shutdown()
    httpd.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def jpeg(color, seed) -> bytes:
    buffer = io.BytesIO()
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color) + rng.normal(0, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def tgz_of(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def hymenoptera_zip() -> bytes:
    return zip_of({f"hymenoptera_data/{split}/{label}/{i}.jpg": jpeg(color, i)
                   for split in ("train", "val")
                   for label, color in (("ants", (200, 60, 40)), ("bees", (220, 200, 40)))
                   for i in range(3)})


def test_fetch_from_a_mirror_gives_the_layout_graft_trains_on(server, tmp_path, capsys):
    url, files = server
    files.files["hymenoptera_data.zip"] = archive = hymenoptera_zip()
    args = ["data", "fetch", "hymenoptera", "--to", str(tmp_path / "data"), "--mirror", url,
            "--sha256", sha(archive), "--cache-dir", str(tmp_path / "cache"), "-q"]
    assert main(args) == 0
    root = tmp_path / "data" / "hymenoptera"
    assert "graft train" in capsys.readouterr().out
    dataset = scan_dataset(root)
    assert dataset.classes == ["ants", "bees"] and len(dataset.samples) == 12
    assert dataset.split_source == "folders"
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]  # no temp
    assert main(args) == 0  # there already: nothing fetched again
    assert "there already" in capsys.readouterr().err


def test_a_dropped_connection_is_resumed(server, tmp_path):
    url, files = server
    data = np.random.default_rng(0).bytes(3 << 20)
    files.files["big.bin"] = data
    files.drops["big.bin"] = 2  # cut twice; each try resumes from what arrived
    path = download(f"{url}/big.bin", tmp_path / "big.bin", sha256=sha(data), progress=False)
    assert path.read_bytes() == data and not (tmp_path / "big.bin.part").exists()
    assert len(files.ranges) == 2 and all(r.startswith("bytes=") for r in files.ranges)
    assert int(files.ranges[0].split("=")[1].rstrip("-")) > 0


def test_an_interrupted_download_resumes_on_the_next_run(server, tmp_path):
    url, files = server
    data = np.random.default_rng(1).bytes(2 << 20)
    files.files["f.bin"] = data
    part = tmp_path / "f.bin.part"
    part.write_bytes(data[:700_000])  # what an interrupted run left
    download(f"{url}/f.bin", tmp_path / "f.bin", sha256=sha(data), progress=False)
    assert files.ranges == ["bytes=700000-"] and (tmp_path / "f.bin").read_bytes() == data


def test_a_tampered_archive_is_refused_and_nothing_is_left(server, tmp_path):
    url, files = server
    archive = hymenoptera_zip()
    files.files["hymenoptera_data.zip"] = archive[:-10] + b"0123456789"  # not the pinned file
    with pytest.raises(ChecksumError, match="was deleted"):
        fetch_dataset("hymenoptera", tmp_path / "data", mirror=url, sha256=sha(archive),
                      cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "data" / "hymenoptera").exists()
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # no download kept
    assert main(["data", "fetch", "hymenoptera", "--to", str(tmp_path / "data"), "--mirror", url,
                 "--sha256", sha(archive), "--cache-dir", str(tmp_path / "cache"), "-q"]) == 2


def test_offline_says_where_to_download_and_how_to_use_the_file(tmp_path, capsys):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    assert main(["data", "fetch", "hymenoptera", "--to", str(tmp_path), "--mirror",
                 f"http://127.0.0.1:{port}", "--cache-dir", str(tmp_path / "cache"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "Cannot download" in err and "--from hymenoptera_data.zip" in err
    assert "https://download.pytorch.org/tutorial/hymenoptera_data.zip" in err
    assert "Traceback" not in err


def test_from_a_file_downloaded_by_hand(tmp_path):
    archive = tmp_path / "hymenoptera_data.zip"
    archive.write_bytes(hymenoptera_zip())
    with pytest.raises(ChecksumError, match="left as it is"):  # the pinned checksum applies
        fetch_dataset("hymenoptera", tmp_path / "out", from_files=[archive], progress=False)
    assert archive.exists()  # the user's file is never deleted
    root = fetch_dataset("hymenoptera", tmp_path / "out", from_files=[archive],
                         sha256=sha(archive.read_bytes()), progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["train", "val"]


def test_traversal_links_and_bombs_are_refused(tmp_path):
    cases = {
        "up.tar.gz": tgz_of({"ok/a.txt": b"a", "../escaped.txt": b"x"}),
        "abs.zip": zip_of({"/tmp/escaped.txt": b"x"}),
        "link.tar.gz": tgz_of({"ok/a.txt": b"a"}, links={"ok/passwd": "/etc/passwd"}),
        "bomb.zip": zip_of({"zeros.bin": bytes(100 << 20)}),  # 100 MiB of zeros in ~100 KB
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(UnsafeArchiveError):
            unpack(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(cases)  # nothing unpacked
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_flowers102_uses_the_official_split_and_labels(server, tmp_path, monkeypatch):
    from scipy.io import savemat

    url, files = server
    labels = np.array([[1, 2, 1, 2, 1, 2]])
    files.files["102flowers.tgz"] = tgz = tgz_of(
        {f"jpg/image_{i:05d}.jpg": jpeg((30 * i, 100, 90), i) for i in range(1, 7)})
    for name, content in (("imagelabels.mat", {"labels": labels}),
                          ("setid.mat", {"trnid": np.array([[1, 2]]), "valid": np.array([[3, 4]]),
                                         "tstid": np.array([[5, 6]])})):
        buffer = io.BytesIO()
        savemat(buffer, content)
        files.files[name] = buffer.getvalue()
    monkeypatch.setenv("GRAFT_DATA_MIRROR", url)  # the company-mirror setting
    root = fetch_dataset(
        "oxford_flowers102", tmp_path / "data", progress=False,
        cache_dir=tmp_path / "cache",
        sha256=[f"102flowers.tgz={sha(tgz)}",
                f"imagelabels.mat={sha(files.files['imagelabels.mat'])}",
                f"setid.mat={sha(files.files['setid.mat'])}"])
    found = sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))
    assert found == ["test/001/image_00005.jpg", "test/002/image_00006.jpg",
                     "train/001/image_00001.jpg", "train/002/image_00002.jpg",
                     "val/001/image_00003.jpg", "val/002/image_00004.jpg"]


def test_cifar10_binary_batches_arrive_as_a_folder(server, tmp_path):
    url, files = server
    rng = np.random.default_rng(0)
    records = {name: bytes(np.concatenate([np.concatenate([[i % 10], rng.integers(0, 255, 3072)])
                                           for i in range(20)]).astype(np.uint8))
               for name in ("data_batch_1.bin", "test_batch.bin")}
    records["batches.meta.txt"] = b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\n" \
        b"ship\ntruck"
    files.files["cifar-10-binary.tar.gz"] = tgz = tgz_of(
        {f"cifar-10-batches-bin/{k}": v for k, v in records.items()})
    root = fetch_dataset("cifar10", tmp_path / "data", mirror=url, sha256=sha(tgz),
                         cache_dir=tmp_path / "cache", progress=False)
    assert (root / "data_batch_1.bin").read_bytes() == records["data_batch_1.bin"]


def test_unknown_names_and_bad_options_are_clear(tmp_path, capsys):
    assert main(["data", "fetch", "flowers", "--to", str(tmp_path)]) == 2
    assert "Unknown dataset 'flowers'" in capsys.readouterr().err
    assert main(["data", "fetch", "hymenoptera", "--split", "30-per-class",
                 "--to", str(tmp_path)]) == 2
    assert "does not apply to hymenoptera" in capsys.readouterr().err
    assert main(["data", "fetch", "hymenoptera", "--sha256", "abc", "--to", str(tmp_path)]) == 2
    assert "64 hexadecimal digits" in capsys.readouterr().err
    assert main(["data", "fetch", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "oxford_flowers102" in listing and "setid.mat" in listing and "cite:" in listing
    with pytest.raises(DownloadError):
        download("http://127.0.0.1:9/none", tmp_path / "x", sha256=None, progress=False)
