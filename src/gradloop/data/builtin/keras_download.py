"""The Keras data set cache, and downloads into it.

The same files in the same folder as keras.datasets, so that a download by
either tool serves both. The only module here that touches the network. A
network failure is never raised: whether it is an error or a cue to fall back
to mnist-sample is the caller's (``load_dataset``'s) decision.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.request
from contextlib import suppress
from pathlib import Path

from gradloop.data.builtin.raw import _CHUNK_BYTES
from gradloop.errors import ConfigError

DEFAULT_DATA_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# The hashes keras.datasets pins; it pins none for Fashion-MNIST, so neither do we.
_KNOWN_SHA256 = {"mnist.npz": "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"}


def keras_cache_dir() -> Path:
    """Where keras.datasets caches files, so a download by either tool serves both."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "datasets"


def download_keras_dataset(name: str, *, base_url: str | None = None, timeout: float = 5.0) -> Path | None:
    """Return the cached Keras files of ``name``, downloading them first if needed.

    Same files and layout as keras.datasets: ``mnist`` gives ``<cache>/mnist.npz``,
    ``fashion_mnist`` the folder ``<cache>/fashion-mnist``. Each file is written
    to a temporary name and renamed, so an interrupted download never leaves a
    half file in the cache. Returns None on any network failure, quietly,
    because the caller decides whether that is an error or a fallback.
    Hashes are verified only for the default URL, whose files are known.
    """
    cache = keras_cache_dir()
    if name == "mnist":
        folder, files, result = cache, ("mnist.npz",), cache / "mnist.npz"
    elif name == "fashion_mnist":
        folder = result = cache / "fashion-mnist"
        files = FASHION_MNIST_FILES
    else:
        raise ConfigError(f"no Keras download for {name!r}; choose mnist or fashion_mnist")
    url = base_url or os.environ.get("GRADLOOP_DATA_URL") or DEFAULT_DATA_URL
    for file_name in files:
        if (folder / file_name).is_file():
            continue
        expected = _KNOWN_SHA256.get(file_name) if url == DEFAULT_DATA_URL else None
        if not _download_file(f"{url.rstrip('/')}/{file_name}", folder / file_name, timeout, expected):
            return None
    return result


def _download_file(url: str, target: Path, timeout: float, sha256: str | None) -> bool:
    partial: str | None = None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as out:
                partial = out.name
                digest = hashlib.sha256()
                while chunk := response.read(_CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
        if sha256 is not None and digest.hexdigest() != sha256:
            return False  # a captive portal or a corrupted transfer: treat as unreachable
        os.replace(partial, target)
        partial = None
        return True
    except (OSError, http.client.HTTPException, ValueError):  # URLError and timeouts are OSErrors
        return False
    finally:
        if partial is not None:
            with suppress(OSError):
                os.unlink(partial)
