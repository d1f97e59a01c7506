"""Where a row's images come from: relative paths (the data file's folder, then ``data.image_dir``), URLs
(fetched once, then from the cache; offline, a named error), ``data:`` URIs."""

from __future__ import annotations

import base64
import functools
import http.server
import socket
import threading
from pathlib import Path

import pytest

from rlhf_lab.data.formats import DataError, convert_file
from rlhf_lab.data.images import ImageLookup, encode_png


def png(colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    return encode_png(Image.new("RGB", (8, 8), colour))


def row(image: object) -> dict:
    return {
        "prompt": [{"role": "user", "content": "<image>What colour?"}],
        "chosen": [{"role": "assistant", "content": "Red."}],
        "rejected": [{"role": "assistant", "content": "Blue."}],
        "images": [image],
    }


@pytest.fixture
def server(tmp_path: Path):
    """An HTTP server on localhost serving ``tmp_path/www``; yields (base URL, stop)."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "red.png").write_bytes(png((255, 0, 0)))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            httpd.shutdown()
            httpd.server_close()
            stopped = True

    yield f"http://127.0.0.1:{httpd.server_address[1]}", stop
    stop()


def test_a_url_is_fetched_once_and_then_read_from_the_cache(tmp_path: Path, server) -> None:
    base, stop = server
    lookup = ImageLookup(cache_dir=tmp_path / "cache")
    (first,) = convert_file([row(f"{base}/red.png")], file="data.jsonl", lookup=lookup).examples
    assert first.images[0].encoded() == png((255, 0, 0))
    stop()  # offline now: the cached copy is read
    (again,) = convert_file([row(f"{base}/red.png")], file="data.jsonl", lookup=lookup).examples
    assert again.images[0].digest == first.images[0].digest


def test_an_unreachable_url_is_named_as_a_url(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cat.png"
    with pytest.raises(DataError) as caught:
        convert_file([row(url)], file="data.jsonl", lookup=ImageLookup(cache_dir=tmp_path))
    assert (caught.value.row, caught.value.field) == (0, "images[0]")
    assert caught.value.reason.startswith(f"{url} is a URL and could not be fetched")


def test_a_data_uri_is_decoded() -> None:
    uri = "data:image/png;base64," + base64.b64encode(png((0, 0, 255))).decode()
    (example,) = convert_file([row(uri)], file="data.jsonl").examples
    assert example.images[0].encoded() == png((0, 0, 255))


def test_relative_paths_look_beside_the_file_then_in_image_dir(tmp_path: Path) -> None:
    data, media = tmp_path / "data", tmp_path / "media"
    data.mkdir()
    (media / "img").mkdir(parents=True)
    (media / "img" / "a.png").write_bytes(png((1, 2, 3)))
    file = data / "train.jsonl"
    file.write_text("{}")
    with pytest.raises(DataError) as caught:
        convert_file([row("img/a.png")], file=str(file))
    assert caught.value.reason == f"image file not found: img/a.png (looked in: {data})"
    lookup = ImageLookup(dirs=(data, media))
    (example,) = convert_file([row("img/a.png")], file=str(file), lookup=lookup).examples
    assert example.images[0].path == str(media / "img" / "a.png")
