"""bench/cuda_check.py --smoke: the GPU script's code runs end to end on the CPU with tiny configs,
so that it cannot rot between the rare sessions that have a GPU."""
import subprocess
import sys

from tests.conftest import ROOT


def test_cuda_check_smoke_run_writes_a_full_report(tmp_path):
    out = tmp_path / "report.md"
    r = subprocess.run([sys.executable, "bench/cuda_check.py", "--smoke", "--out", str(out)], capture_output=True,
                       text=True, cwd=ROOT)
    text = out.read_text()
    assert r.returncode == 0, text[-4000:] + r.stderr[-2000:]
    for k in range(1, 10):
        assert f"\n## {k}. " in text
    assert "FAIL" not in text and "0 check(s) failed" in text
    assert text.count("PASS") >= 14                   # steps, calls, parity, toy, trainer, evaluation
    assert "| 1 | 1 | eager |" in text and "InstaFlow's loop, diffusers modules" in text and "images / s" in text
    assert "| CLIP score |" in text and "FD(X, X)" in text


def test_reference_tokenizer_files_have_no_blank_line_without_merges():
    """The first GPU lease's report stopped before section 1: transformers 5.17 rejects a merges.txt with
    a blank line, which the byte-level vocabulary (no merges) used to produce."""
    from bench.models import merges_text, reference_tokenizer
    from sd.models.tokenizer import Tokenizer, byte_vocab
    tok = Tokenizer(byte_vocab(), [])
    assert merges_text(tok) == "#version: 0.2\n"
    ref = reference_tokenizer(tok)
    assert ref("a b")["input_ids"][1:-1] == [tok.vocab["a</w>"], tok.vocab["b</w>"]]
