import json
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sd.checkpoints.safetensors_io import DTYPES, SafeOpen, SafetensorsError, load_file, parse_header, save_file
from tests.conftest import ROOT

st = pytest.importorskip("safetensors.torch")    # the reference implementation, as an oracle


def sample_tensors():
    g = torch.Generator().manual_seed(0)
    out = {f"t_{name.lower()}": (torch.randn(3, 5, generator=g) * 4).to(dt) for name, dt in DTYPES.items()
           if dt.is_floating_point}
    out.update(i64=torch.arange(-7, 7, dtype=torch.int64), i32=torch.arange(6, dtype=torch.int32).reshape(2, 3),
               i16=torch.tensor([-3, 9], dtype=torch.int16), i8=torch.tensor([-128, 127], dtype=torch.int8),
               u8=torch.arange(256, dtype=torch.uint8), flag=torch.tensor([True, False, True]),
               scalar=torch.tensor(2.5), empty=torch.zeros(0, 4), odd_f16=torch.randn(3, generator=g).half())
    return out


def assert_same(a, b):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k].reshape(-1).view(torch.uint8), b[k].reshape(-1).view(torch.uint8)), k


def test_we_read_what_the_reference_writes(tmp_path):
    t = sample_tensors()
    st.save_file(t, tmp_path / "ref.safetensors", metadata={"format": "pt", "note": "ü"})
    assert_same(load_file(tmp_path / "ref.safetensors"), t)
    assert SafeOpen(tmp_path / "ref.safetensors").metadata() == {"format": "pt", "note": "ü"}


def test_the_reference_reads_what_we_write(tmp_path):
    t = sample_tensors()
    save_file(t, tmp_path / "ours.safetensors", metadata={"format": "pt"})
    assert_same(st.load_file(tmp_path / "ours.safetensors"), t)
    from safetensors import safe_open
    with safe_open(tmp_path / "ours.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
    assert not (tmp_path / "ours.safetensors.tmp").exists()


def test_tensors_are_lazy_views_of_a_private_map(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(1000), "b": torch.zeros(10)}, path)
    f = SafeOpen(path)
    a = f.get_tensor("a")
    assert a.untyped_storage().nbytes() == path.stat().st_size      # a view of the mapped file, no copy
    a.mul_(3)                                                        # copy-on-write: the file is untouched
    assert torch.equal(load_file(path)["a"], torch.ones(1000))
    with pytest.raises(KeyError, match="no tensor 'c'"):
        f.get_tensor("c")


def _file(header, data=b""):
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(raw)) + raw + data


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize("content,message", [
    (b"\x01\x02", "too short for a header length"),
    (struct.pack("<Q", 1000) + b"{}", "header length 1000 exceeds the file"),
    (_file(b"{not json"), "not valid UTF-8 JSON"),
    (_file(b"\xff\xfe"), "not valid UTF-8 JSON"),
    (_file([1, 2]), "header must be a JSON object, got list"),
    (_file(b"[" * 100000 + b"]" * 100000), "not valid UTF-8 JSON"),
    (_file({"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)), "tensor 'a': unknown dtype 'F33'"),
    (_file({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8)), "non-negative integers"),
    (_file({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, bytes(4)), "non-negative integers"),
    (_file({"a": {"dtype": "F32", "shape": [2]}}, bytes(8)), "exactly dtype, shape and data_offsets"),
    (_file({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)), "needs 12 bytes"),
    (_file({"a": {"dtype": "F32", "shape": [2 ** 40, 2 ** 40], "data_offsets": [0, 8]}}, bytes(8)), "needs"),
    (_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8)), "0 <= begin <= end"),
    (_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(4)), "run past the data area"),
    (_file(GOOD, bytes(12)), "cover 8 bytes of a 12-byte data area"),
    (_file({**GOOD, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)), "overlap"),
    (_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)), "gap"),
    (_file(b'{"a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}, "a": {}}'), "duplicate key 'a'"),
    (_file({"__metadata__": {"x": 1}}), "__metadata__ must be an object of string to string"),
])
def test_invalid_files_raise_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(SafetensorsError, match=None) as err:
        load_file(path)
    assert message in str(err.value) and str(path) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_header_length_limit(tmp_path, monkeypatch):
    import sd.checkpoints.safetensors_io as sio
    path = tmp_path / "big_header.safetensors"
    path.write_bytes(_file(GOOD, bytes(8)))
    assert load_file(path)["a"].shape == (2,)
    monkeypatch.setattr(sio, "MAX_HEADER", 16)        # instead of writing a 100 MB header
    with pytest.raises(SafetensorsError, match="exceeds the limit of 16 bytes"):
        load_file(path)


def test_parse_header_alone():
    entries, meta, start = parse_header(json.dumps(GOOD).encode(), 8 + len(json.dumps(GOOD)) + 8)
    assert entries == {"a": (torch.float32, (2,), 0, 8)} and meta == {} and start == 8 + len(json.dumps(GOOD))


def _mutations(rng, base):
    n = struct.unpack("<Q", base[:8])[0]
    header = json.loads(base[8:8 + n])
    kind = rng.randrange(6)
    if kind == 0:                                   # flip bytes of the header
        b = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(8, 8 + n)] = rng.randrange(256)
        return bytes(b)
    if kind == 1:                                   # truncate anywhere
        return base[:rng.randrange(len(base))]
    if kind == 2:                                   # lie about the header length
        return struct.pack("<Q", rng.choice([0, 1, n - 1, n + 1, n + 8, 2 ** 63, rng.randrange(2 ** 64)])) + base[8:]
    if kind == 3:                                   # append junk
        return base + bytes(rng.randrange(1, 64))
    key = rng.choice([k for k in header if k != "__metadata__"])
    field = rng.choice(["dtype", "shape", "data_offsets"])
    weird = [-1, 0, 1, 7, 2 ** 31, 2 ** 64, 1.5, "F32", "BF16", "x", None, True, [], [1], [-1, 2], [2, 1],
             [0, 2 ** 62], [[1]], {"a": 1}]
    if kind == 4:
        header[key][field] = rng.choice(weird)
    else:
        header[key] = rng.choice([None, 3, [], {"dtype": "F32"}, dict(header[key], extra=1)])
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + base[8 + n:]


def fuzz(folder, cases=10_000):
    """Load `cases` seeded mutations of a small file: each must load (and then equal the reference's
    reading of it) or raise SafetensorsError. Returns the outcomes, the slowest case's seconds and the
    growth of the process's peak RSS over the loop (MiB)."""
    import resource
    import time
    folder = Path(folder)
    save_file({"w": torch.randn(4, 3), "b": torch.arange(3, dtype=torch.int16), "h": torch.randn(5).half()},
              folder / "base.safetensors", metadata={"k": "v"})
    base = (folder / "base.safetensors").read_bytes()
    assert_same(load_file(folder / "base.safetensors"), st.load_file(folder / "base.safetensors"))   # warm both
    rng = random.Random(1234)
    path = folder / "fuzz.safetensors"
    out = {"ok": 0, "error": 0, "slowest_s": 0.0}
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(cases):
        path.write_bytes(_mutations(rng, base))
        t0 = time.perf_counter()
        try:
            ours = load_file(path)
            out["ok"] += 1
        except SafetensorsError:
            out["error"] += 1
            ours = None
        out["slowest_s"] = max(out["slowest_s"], time.perf_counter() - t0)
        if ours is None:
            continue
        try:
            ref = st.load_file(path)
        except Exception:
            continue        # the reference may be stricter; what we accept must still be coherent
        assert_same(ours, ref)
    out["rss_growth_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024   # Linux: KiB
    return out


def test_fuzz_never_crashes_hangs_or_allocates(tmp_path):
    """10,000 seeded mutations in a fresh process (so that its peak RSS is this loop's own): no crash,
    no case slower than 1 s (a hang; a case takes about 0.1 ms), and the peak memory grows by less than
    16 MiB (a reader that believed a lying header's sizes would allocate GiBs)."""
    code = f"import json; from tests.test_safetensors import fuzz; print(json.dumps(fuzz({str(tmp_path)!r})))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["error"] > 5000 and out["ok"] > 10, out       # both branches exercised
    assert out["slowest_s"] < 1.0 and out["rss_growth_mib"] < 16, out


def test_reading_into_another_dtype_casts_and_keeps_no_page_of_the_map(tmp_path):
    """load_file(dtype=): floating tensors are read and cast (what a bf16 load of an fp16 checkpoint does), each
    in a storage of its own, so the map's pages are not held; other dtypes stay views; a short file is named."""
    f = tmp_path / "w.safetensors"
    ts = {"a": torch.randn(64, 33, dtype=torch.float16), "b": torch.arange(10), "c": torch.randn(5)}
    save_file(ts, f)
    mapped = load_file(f)
    cast = load_file(f, dtype=torch.bfloat16)
    assert cast["a"].dtype == torch.bfloat16 and torch.equal(cast["a"], ts["a"].to(torch.bfloat16))
    assert torch.equal(cast["c"], ts["c"].to(torch.bfloat16)) and torch.equal(cast["b"], ts["b"])
    assert cast["b"].dtype == torch.int64                                     # integers are not cast
    size = f.stat().st_size
    assert mapped["a"].untyped_storage().nbytes() == size                     # a view of the whole map
    assert cast["a"].untyped_storage().nbytes() == 64 * 33 * 2                # its own copy
    assert cast["b"].untyped_storage().nbytes() == size                       # still a view
    same = load_file(f, dtype=torch.float16)                                  # same dtype: the view
    assert same["a"].untyped_storage().nbytes() == size
    opened = SafeOpen(f)
    f.write_bytes(f.read_bytes()[:-200])                                      # truncated after opening
    with pytest.raises(SafetensorsError, match="'a': the file ended early"):
        opened.get_tensor("a", dtype=torch.float32)
