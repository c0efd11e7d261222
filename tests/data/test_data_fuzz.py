"""Fuzzing the IDX and npz readers: no input makes them crash, hang or allocate from a lying header.

Property of every test: the reader returns the right array (checked against an
independent decoder written here) or raises DataError; it never raises
anything else, never runs longer than a few seconds, never allocates far more
memory than the input holds, and never unpickles. Runs are derandomized, so
CI sees the same examples every time.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import math
import signal
import struct
import tempfile
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradloop import data
from gradloop.errors import DataError

FUZZ = settings(
    max_examples=500,
    derandomize=True,
    database=None,
    deadline=5000,  # ms; generous on a shared 2-core machine, the alarm below catches true hangs
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HANG_SECONDS = 10
MEMORY_SLACK = 16 * 2**20  # what reading may allocate beyond a few times the input's real size


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


@contextlib.contextmanager
def bounded(max_bytes: int):
    """Fail on a hang (SIGALRM) and report the peak of traced memory in ``peak[0]``."""

    def hang(signum, frame):
        raise TimeoutError(f"reader still running after {HANG_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(HANG_SECONDS)
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert peak <= max_bytes, f"peak memory {peak:,} bytes > {max_bytes:,} for this input"


# --------------------------------------------------------------------- IDX


def idx_bytes(dims: tuple[int, ...], payload: bytes) -> bytes:
    return b"\0\0\x08" + bytes([len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


def reference_idx(content: bytes) -> np.ndarray | None:
    """An independent, naive IDX decoder: the array, or None if the bytes are not a valid file."""
    if content[:2] == b"\x1f\x8b":
        try:
            content = gzip.decompress(content)
        except (OSError, EOFError, zlib.error):
            return None
    if len(content) < 4 or content[:3] != b"\0\0\x08" or content[3] not in (1, 3):
        return None
    ndim = content[3]
    if len(content) < 4 + 4 * ndim:
        return None
    dims = struct.unpack(f">{ndim}I", content[4 : 4 + 4 * ndim])
    payload = content[4 + 4 * ndim :]
    if 0 in dims or len(payload) != math.prod(dims):
        return None
    return np.frombuffer(payload, np.uint8).reshape(dims)


def check_idx(path: Path, content: bytes, *, max_items: int | None = None) -> None:
    path.write_bytes(content)
    expected = reference_idx(content)
    with bounded(4 * len(content) + MEMORY_SLACK):
        try:
            got = data.read_idx(path, max_items=max_items)
        except DataError as exc:
            got = exc
    if expected is None:
        assert isinstance(got, DataError), f"accepted an invalid file: {content[:40]!r}"
        assert str(path) in str(got) and "\n" not in str(got)
    else:
        assert isinstance(got, np.ndarray), f"refused a valid file: {got}"
        np.testing.assert_array_equal(got, expected if max_items is None else expected[:max_items])
        assert got.dtype == np.uint8


def valid_idx() -> st.SearchStrategy[bytes]:
    labels = st.integers(1, 64).flatmap(
        lambda n: st.binary(min_size=n, max_size=n).map(lambda b: idx_bytes((len(b),), b))
    )
    images = st.tuples(st.integers(1, 4), st.integers(1, 28), st.integers(1, 28)).flatmap(
        lambda dims: st.binary(min_size=math.prod(dims), max_size=math.prod(dims)).map(lambda b: idx_bytes(dims, b))
    )
    return st.one_of(labels, images)


@st.composite
def mutated(draw, base: st.SearchStrategy[bytes]) -> bytes:
    """A valid file with some bytes flipped, cut off, inserted or appended, maybe gzipped before or after."""
    content = draw(base)
    if draw(st.booleans()):
        content = gzip.compress(content, mtime=0)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "extend", "insert", "set"]))
        at = draw(st.integers(0, max(len(content) - 1, 0)))
        if kind == "flip" and content:
            content = content[:at] + bytes([content[at] ^ draw(st.integers(1, 255))]) + content[at + 1 :]
        elif kind == "truncate":
            content = content[:at]
        elif kind == "extend":
            content += draw(st.binary(min_size=1, max_size=16))
        elif kind == "insert":
            content = content[:at] + draw(st.binary(min_size=1, max_size=4)) + content[at:]
        elif kind == "set" and len(content) >= 4:  # overwrite a header-sized word, e.g. a dimension
            word = struct.pack(">I", draw(st.sampled_from([0, 1, 27, 28, 29, 2**16, 2**31 - 1, 2**32 - 1])))
            content = content[:at] + word + content[at + 4 :]
    if draw(st.integers(0, 3)) == 0:
        content = gzip.compress(content, mtime=0)
    return content


@FUZZ
@given(content=st.one_of(st.binary(max_size=600), st.binary(max_size=600).map(lambda b: b"\0\0\x08" + b)))
def test_read_idx_arbitrary_bytes(scratch, content):
    check_idx(scratch / "arbitrary-idx", content)


@settings(FUZZ, max_examples=800)
@given(content=mutated(valid_idx()), max_items=st.one_of(st.none(), st.integers(0, 5)))
def test_read_idx_mutated_valid_files(scratch, content, max_items):
    check_idx(scratch / "mutated-idx", content, max_items=max_items)


@settings(FUZZ, max_examples=300)
@given(
    dims=st.one_of(
        st.tuples(st.integers(1, 2**32 - 1)),
        st.tuples(st.integers(1, 2**32 - 1), st.integers(1, 2**32 - 1), st.integers(1, 2**32 - 1)),
    ),
    payload=st.binary(max_size=2000),
    compress=st.booleans(),
)
def test_read_idx_lying_headers_allocate_nothing_absurd(scratch, dims, payload, compress):
    """A header may claim up to 2**96 bytes: the reader must not believe it before the bytes arrive."""
    content = idx_bytes(dims, payload)
    check_idx(scratch / "liar-idx", gzip.compress(content, mtime=0) if compress else content)


def test_read_idx_gzip_bomb_under_a_lying_header_stops_at_the_declared_size(scratch):
    """64 MB of zeros in 64 KB of gzip behind a header declaring 1 MB: read 1 MB + 1 byte, then stop."""
    content = gzip.compress(idx_bytes((2**20,), bytes(64 * 2**20)), mtime=0)
    path = scratch / "bomb-idx"
    path.write_bytes(content)
    with bounded(8 * 2**20), pytest.raises(DataError, match="more data follows"):
        data.read_idx(path)


# --------------------------------------------------------------------- npz


def npz_bytes(arrays: dict[str, np.ndarray], *, compress: bool) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buffer, **arrays)
    return buffer.getvalue()


@st.composite
def valid_npz(draw) -> bytes:
    n = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    arrays = {"x_train": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), "y_train": rng.integers(0, 10, n)}
    if draw(st.booleans()):
        arrays.update(x_test=arrays["x_train"][:1].copy(), y_test=arrays["y_train"][:1].astype(np.uint8))
    return npz_bytes(arrays, compress=draw(st.booleans()))


def check_npz(path: Path, content: bytes, original: bytes | None = None) -> None:
    path.write_bytes(content)
    with bounded(8 * len(content) + MEMORY_SLACK):
        try:
            raw = data.load_npz(path)
        except DataError as exc:
            assert path.name in str(exc) and "\n" not in str(exc)
            return
    for x, y in ((raw.x_train, raw.y_train), (raw.x_test, raw.y_test)):
        if x is None:
            assert y is None
            continue
        assert x.dtype == np.uint8 and x.ndim == 3 and x.shape[1:] == (28, 28) and len(x) > 0
        assert y.dtype == np.int64 and y.shape == (len(x),)
    if original is not None and content == original:
        reference = np.load(io.BytesIO(original))
        np.testing.assert_array_equal(raw.x_train, reference["x_train"])
        np.testing.assert_array_equal(raw.y_train, reference["y_train"])


@FUZZ
@given(
    content=st.one_of(
        st.binary(max_size=600),
        st.binary(max_size=600).map(lambda b: b"PK\x03\x04" + b),
        st.binary(max_size=600).map(lambda b: b"\x93NUMPY" + b),
    )
)
def test_load_npz_arbitrary_bytes(scratch, content):
    check_npz(scratch / "arbitrary.npz", content)


@settings(FUZZ, max_examples=800)
@given(data_=st.data())
def test_load_npz_mutated_valid_archives(scratch, data_):
    original = data_.draw(valid_npz())
    content = data_.draw(mutated(st.just(original))) if data_.draw(st.integers(0, 9)) else original
    check_npz(scratch / "mutated.npz", content, original)


def npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": shape})
    return header.getvalue()


def lie_about_size(archive: bytes, member: str, size: int) -> bytes:
    """Patch the uncompressed size that the zip's headers record for ``member``."""
    name = member.encode()
    out = bytearray(archive)
    for signature, name_len_at, size_at in ((b"PK\x01\x02", 28, 24), (b"PK\x03\x04", 26, 22)):
        at = out.find(signature)
        while at >= 0:
            name_len = struct.unpack_from("<H", out, at + name_len_at)[0]
            header_end = at + (46 if signature == b"PK\x01\x02" else 30)
            if out[header_end : header_end + name_len] == name:
                struct.pack_into("<I", out, at + size_at, size)
            at = out.find(signature, at + 4)
    return bytes(out)


@settings(FUZZ, max_examples=300)
@given(
    shape=st.lists(
        st.one_of(st.integers(0, 64), st.integers(2**20, 2**31), st.integers(0, 2**40)), min_size=1, max_size=3
    ).map(tuple),
    descr=st.sampled_from(["|u1", "<f8", "<i8", ">u2"]),
    stored=st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([2**31 - 1, 2**32 - 1])),
    method=st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]),
)
def test_load_npz_lying_headers_allocate_nothing_absurd(scratch, shape, descr, stored, method):
    """The .npy header claims any shape and the zip any uncompressed size; 200 real bytes follow."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        archive.writestr("x_train.npy", npy_header(shape, descr) + bytes(200))
        archive.writestr("y_train.npy", npy_header((1,), "<i8") + bytes(8))
    content = lie_about_size(buffer.getvalue(), "x_train.npy", stored)
    check_npz(scratch / "liar.npz", content)


def test_load_npz_single_npy_with_a_lying_header_is_refused_before_reading(scratch):
    path = scratch / "single.npz"
    content = npy_header((2**40, 28, 28)) + bytes(100)
    check_npz(path, content)
    with pytest.raises(DataError, match="single array"):
        data.load_npz(path)


@settings(FUZZ, max_examples=200)
@given(data_=st.data())
def test_load_npz_never_unpickles_even_when_mangled(scratch, data_):
    """Object arrays (pickles) in any state of damage: refused, and the trap never springs."""
    marker = scratch / "unpickled"

    class Trap:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    buffer = io.BytesIO()
    np.savez(buffer, x_train=np.array([Trap()], dtype=object), y_train=np.array([Trap()], dtype=object))
    content = data_.draw(mutated(st.just(buffer.getvalue())))
    check_npz(scratch / "pickled.npz", content)
    assert not marker.exists()


def zip_of_arrays(method: int = zipfile.ZIP_STORED, **members: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, content in members.items():
            archive.writestr(name.replace("__", "."), content)
    return buffer.getvalue()


def set_zip_field(archive: bytes, *, local_at: int, central_at: int, value: int, size: str = "<H") -> bytes:
    """Overwrite one field in every local and central file header."""
    out = bytearray(archive)
    for signature, offset in ((b"PK\x03\x04", local_at), (b"PK\x01\x02", central_at)):
        at = out.find(signature)
        while at >= 0:
            struct.pack_into(size, out, at + offset, value)
            at = out.find(signature, at + 4)
    return bytes(out)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


IMAGES, LABELS = npy(np.zeros((2, 28, 28), np.uint8)), npy(np.array([0, 1]))
ZIP_FEATURES_NUMPY_NEVER_WRITES = {
    "bzip2": (zip_of_arrays(zipfile.ZIP_BZIP2, x_train__npy=IMAGES, y_train__npy=LABELS), "compression method 12"),
    "lzma": (zip_of_arrays(zipfile.ZIP_LZMA, x_train__npy=IMAGES, y_train__npy=LABELS), "compression method 14"),
    "unknown method": (
        set_zip_field(zip_of_arrays(x_train__npy=IMAGES, y_train__npy=LABELS), local_at=8, central_at=10, value=99),
        "compression method 99",
    ),
    "encrypted": (
        set_zip_field(zip_of_arrays(x_train__npy=IMAGES, y_train__npy=LABELS), local_at=6, central_at=8, value=1),
        "encrypted",
    ),
}


@pytest.mark.parametrize("case", ZIP_FEATURES_NUMPY_NEVER_WRITES, ids=list(ZIP_FEATURES_NUMPY_NEVER_WRITES))
def test_load_npz_refuses_zip_features_numpy_never_writes(scratch, case):
    content, message = ZIP_FEATURES_NUMPY_NEVER_WRITES[case]
    path = scratch / "features.npz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        data.load_npz(path)


def test_load_npz_reads_the_member_whose_header_it_checked(scratch):
    """'x_train' and 'x_train.npy' side by side: the checked member is the one read, so a lying
    header cannot hide behind an honest twin."""
    liar = npy_header((2**40, 28, 28)) + bytes(100)
    path = scratch / "twins.npz"
    path.write_bytes(zip_of_arrays(x_train__npy=npy(np.ones((2, 28, 28), np.uint8)), x_train=liar, y_train__npy=LABELS))
    with bounded(MEMORY_SLACK):
        raw = data.load_npz(path)
    np.testing.assert_array_equal(raw.x_train, np.ones((2, 28, 28), np.uint8))


# --------------------------------------------------------------------- CSV


def reference_csv(content: bytes) -> tuple[list[str], list[list[str]]] | None:
    """An independent, naive reading of a table of numbers: header and rows of stripped cells, or None when
    the bytes are not plain comma-separated UTF-8 text of equal rows (quotes and blank rows left aside)."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if '"' in text or "\0" in text or "\r" in text or text.startswith("\ufeff"):
        return None
    lines = [line.split(",") for line in text.split("\n") if line.strip(", \t\f\v")]
    if len(lines) < 2 or any(len(line) != len(lines[0]) for line in lines):
        return None
    return [c.strip() for c in lines[0]], [[c.strip() for c in line] for line in lines[1:]]


def check_csv(path: Path, content: bytes, *, target: str = "label", **options) -> None:
    """``table.load`` gives a valid table or one DataError/ConfigError line naming the file, in bounded time
    and memory; a table of numbers with whole-number labels is read as the reference reads it."""
    from gradloop.data.sources import DataSpec, table
    from gradloop.errors import ConfigError

    path.write_bytes(content)
    with bounded(16 * len(content) + MEMORY_SLACK):
        try:
            loaded = table.load(DataSpec(str(path), target=target, **options))
        except (DataError, ConfigError) as exc:
            assert "\n" not in str(exc) and (path.stem in str(exc) or target in str(exc) or "task" in str(exc)), str(
                exc
            )
            return
    x, y = loaded.train.x, loaded.train.y
    assert x.dtype == np.float32 and x.ndim == 2 and len(x) == len(y) > 0 and np.isfinite(x).all()
    if loaded.task == "classification":
        assert y.dtype == np.int64 and y.min() >= 0 and y.max() < len(loaded.class_names)
    else:
        assert loaded.class_names is None and np.isfinite(y).all()
    reference = reference_csv(content)
    if reference is None or options or loaded.preprocessing["one_hot"] or loaded.task != "classification":
        return
    header, rows = reference
    label = header.index(target)
    if not all(row[label].lstrip("+-").isdigit() and row[label].isascii() for row in rows):
        return  # text labels: the reference reads whole numbers only
    features = [[float(c) for i, c in enumerate(row) if i != label] for row in rows]
    np.testing.assert_array_equal(x, np.array(features, dtype=np.float64).astype(np.float32))
    names = sorted({str(int(row[label])) for row in rows}, key=int)
    np.testing.assert_array_equal(y, [names.index(str(int(row[label]))) for row in rows])


CELLS = st.one_of(
    st.integers(-9, 9).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
    st.sampled_from(["", "NA", "nan", "?", "inf", "-inf", "1e39", "1_0", "0x1", " 7 ", "007", "+3", "1e-320", "abc"]),
    st.integers(10**300, 10**400).map(str),  # a digit string float64 cannot hold, or holds as inf
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=5),
)


@st.composite
def csv_tables(draw) -> bytes:
    """Tables with a header naming 'label', cells of every sort, now and then a row of another width."""
    width = draw(st.integers(1, 4))
    header = [f"f{i}" for i in range(width)] + ["label"]
    rows = draw(st.lists(st.lists(CELLS, min_size=width + 1, max_size=width + 1), min_size=0, max_size=8))
    if draw(st.integers(0, 4)) == 0:
        rows.append(draw(st.lists(CELLS, max_size=width + 3)))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return newline.join(",".join(row) for row in [header, *rows]).encode("utf-8", "surrogatepass")


@st.composite
def numeric_tables(draw) -> bytes:
    """Valid tables of numbers with whole-number labels of at least two classes: the reference reads them too."""
    width = draw(st.integers(1, 3))
    n = draw(st.integers(2, 12))
    values = st.floats(-1e6, 1e6, allow_nan=False, width=32).map(lambda v: f"{v:.6g}")
    rows = [
        [*draw(st.lists(values, min_size=width, max_size=width)), str(i % 2 + draw(st.integers(0, 2)) * 2)]
        for i in range(n)
    ]
    return "\n".join(",".join(row) for row in [[f"f{i}" for i in range(width)] + ["label"], *rows]).encode()


@FUZZ
@given(content=st.one_of(st.binary(max_size=600), st.binary(max_size=600).map(lambda b: b"f0,label\n" + b)))
def test_read_csv_arbitrary_bytes(scratch, content):
    check_csv(scratch / "arbitrary.csv", content)


@settings(FUZZ, max_examples=600)
@given(
    content=csv_tables(),
    fill=st.sampled_from([None, "mean", "zero", "drop"]),
    task=st.sampled_from([None, "classification", "regression"]),
)
def test_read_csv_tables_of_every_sort_of_cell(scratch, content, fill, task):
    options = {k: v for k, v in (("fill", fill), ("task", task)) if v is not None}
    check_csv(scratch / "cells.csv", content, **options)


@settings(FUZZ, max_examples=500)
@given(data_=st.data())
def test_read_csv_mutated_valid_tables(scratch, data_):
    """Valid tables of numbers, read exactly as the reference reads them, then with bytes flipped, cut or added."""
    original = data_.draw(numeric_tables())
    content = data_.draw(mutated(st.just(original))) if data_.draw(st.integers(0, 4)) else original
    check_csv(scratch / "mutated.csv", content)


@settings(FUZZ, max_examples=200)
@given(train=numeric_tables(), test=st.one_of(csv_tables(), mutated(numeric_tables())))
def test_read_csv_with_a_damaged_test_file_beside_it(scratch, train, test):
    (scratch / "pair.test.csv").write_bytes(test)
    try:
        check_csv(scratch / "pair.csv", train)
    finally:
        (scratch / "pair.test.csv").unlink()


@settings(FUZZ, max_examples=300)
@given(train=numeric_tables(), new=st.one_of(csv_tables(), mutated(numeric_tables()), st.binary(max_size=300)))
def test_read_csv_features_for_predict(scratch, train, new):
    """What ``gradloop predict`` reads: a table checked against the run's columns, or one error line."""
    from gradloop.data.sources import DataSpec, table
    from gradloop.errors import ConfigError

    (scratch / "fitted.csv").write_bytes(train)
    fitted = table.load(DataSpec(str(scratch / "fitted.csv"), target="label")).preprocessing
    path = scratch / "new.csv"
    path.write_bytes(new)
    with bounded(16 * len(new) + MEMORY_SLACK):
        try:
            x, rows, _ = table.read_features(path, fitted)
        except (DataError, ConfigError) as exc:
            assert "\n" not in str(exc) and path.name in str(exc), str(exc)
            return
    assert x.dtype == np.float32 and x.shape == (len(rows), len(fitted["columns"])) and np.isfinite(x).all()


def test_read_csv_cell_beyond_the_csv_modules_limit_is_one_line(scratch):
    check_csv(scratch / "wide.csv", b"f0,label\n" + b"1" * 200_000 + b",0\n2,1\n")


def test_read_csv_label_of_more_digits_than_python_converts(scratch):
    """int('9' * 5000) raises ValueError in Python >= 3.11: a label of so many digits is one line, never that."""
    check_csv(scratch / "digits.csv", b"f0,label\n1," + b"9" * 5000 + b"\n2,1\n3,1\n", task="classification")
    check_csv(scratch / "digits.csv", b"f0,label\n1," + b"9" * 300 + b"\n2,1\n3,1\n")
