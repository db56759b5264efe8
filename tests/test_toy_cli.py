import json

import numpy as np
import pytest
import torch

from tests.commands import run_module
from toy.__main__ import main
from toy.experiment import Config, run


def _fast(out, seed=0):
    assert main(["--fast", "--no-progress", "--seed", str(seed), "--out", str(out)]) == 0
    return json.loads((out / "metrics.json").read_text()), np.load(out / "samples.npz")


def test_fast_run_writes_its_files_and_is_reproducible(tmp_path, capsys):
    metrics, samples = _fast(tmp_path / "a")
    for name in ("metrics.json", "samples.npz", "samples.png", "trajectories.png", "straightness.png", "inversion.png"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    assert metrics["dataset"] == "paper"
    stages = metrics["stages"]
    assert set(stages) == {"1-rf", "2-rf", "2-rf-distilled"}
    for stage in ("1-rf", "2-rf"):
        assert stages[stage]["straightness"] > 0
        assert set(stages[stage]["w2"]) == {"1", "2", "4", "100"}
    assert set(stages["2-rf-distilled"]["w2"]) == {"1"}
    assert {s: set(e) for s, e in metrics["inversion"].items()} == {s: {"1", "2", "4", "100"} for s in stages}
    assert {"1-rf", "2-rf", "distill", "total"} <= set(metrics["seconds"])
    expected = {"target"} | {f"{s}_{n}" for s in ("1-rf", "2-rf") for n in (1, 2, 4, 100)} | {"2-rf-distilled_1"}
    assert set(samples.files) == expected
    for key in samples.files:
        assert samples[key].shape[0] >= 2000 and samples[key].shape[1] == 2
    table = capsys.readouterr().out
    assert "straightness" in table and "2-rf-distilled" in table

    again, samples_again = _fast(tmp_path / "b")
    assert again["stages"] == metrics["stages"]          # same seed, same numbers
    for key in samples.files:
        assert np.array_equal(samples[key], samples_again[key])


@pytest.mark.parametrize("args,message", [
    (["--dataset", "spiral"], "invalid choice: 'spiral'"),
    (["--iters", "0"], "expected a positive integer, got 0"),
    (["--reflows", "-1"], "expected a positive integer, got -1"),
    (["--distill-iters", "many"], "expected a positive integer, got 'many'"),
    (["--device", "tpu:x"], "--device 'tpu:x'"),
])
def test_bad_arguments_exit_2_with_a_clear_message(args, message):
    r = run_module("toy", *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused():
    r = run_module("toy", "--device", "cuda")
    assert r.returncode == 2 and "CUDA is not available" in r.stderr


def test_config_validation():
    with pytest.raises(ValueError, match="n_eval \\(300\\) cannot exceed n_samples \\(200\\)"):
        run(Config(n_samples=200, n_eval=300))
    with pytest.raises(ValueError, match="steps must be positive integers"):
        run(Config(steps=(1, 0)))
