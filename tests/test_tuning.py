"""The tuning's bookkeeping (toy/tuning.py): the same search for every method, chosen on validation sets that
no seed evaluates on, and settings that reach the training."""
import json
from dataclasses import replace

import pytest
import torch

from tests.commands import run_module
import rectflow as rf
from toy.compare import ALL, CompareConfig, run_compare, with_ancestors
from toy.experiment import Bench
from toy import few_step, tuning
from toy.__main__ import main
from toy.tuning import KNOBS, LRS, configurations, tune, validation_score

TINY = CompareConfig.fast(iters=20, distill_iters=24, n_pairs=512, pair_steps=4, n_samples=64, n_eval=64,
                          steps=(1, 2), progress=False)


def test_every_method_but_1rf_gets_the_same_search():
    assert set(KNOBS) == set(ALL) - {"1-rf"}
    for m in KNOBS:
        confs = configurations(m)
        knob, values = KNOBS[m]
        assert len(confs) == 8 and len({tuple(sorted(c.items())) for c in confs}) == 8, m
        assert {c["lr"] for c in confs} == set(LRS) and {c[knob] for c in confs} == set(values), m
    with pytest.raises(ValueError, match="1-rf"):
        configurations("1-rf")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_validation_sets_are_no_seeds_evaluation_sets(seed):
    """Validation noises and targets at seed 0 (where searches run) share no point with any seed's evaluation sets."""
    val = Bench(replace(TINY, seed=0), "validation")
    ev = Bench(replace(TINY, seed=seed))
    for a, b in ((val.z_eval, ev.z_eval), (val.target, ev.target)):
        assert torch.cdist(a, b).min() > 1e-6


def test_multistep_re_noising_draws_differ_between_validation_and_evaluation(monkeypatch):
    """CD's and CT's samplers draw fresh noise too: a search must not see the evaluation's draws."""
    seeds = {}

    def recording(model, z, k, generator, source):
        seeds.setdefault(split, []).append(generator.initial_seed())
        return z
    monkeypatch.setattr(few_step, "consistency_sample", recording)
    for split in ("evaluation", "validation"):
        b = Bench(TINY, split)
        few_step.score_few_step("ct", b, lambda x, t: x, {})
    assert seeds["evaluation"] == [TINY.seed + 300 + k for k in TINY.steps]       # the documented runs' draws
    assert not set(seeds["evaluation"]) & set(seeds["validation"])


def test_the_search_scores_on_validation_at_seed_0_and_keeps_the_lowest(monkeypatch):
    monkeypatch.setitem(tuning.TUNED, "1-rf-distilled", {"lr": 1e-2, "loss": "mse"})
    calls = []

    class Res:
        def __init__(self, w2):
            self.metrics = {"stages": {"cd": {"w2": w2}}}

    def fake_run(cfg, split, ancestors):
        calls.append((cfg, split))
        s = cfg.settings["cd"]
        err = abs(s["lr"] - 1e-3) * 100 + (0.5 if s["ema"] else 0.0)       # lowest: lr 1e-3, ema 0
        return Res({"1": 1 + err, "2": 2 + err, "4": 3 + err, "8": 4 + err, "100": 0.0})
    rows, best = tune("cd", replace(TINY, seed=5), run=fake_run)
    assert best == {"lr": 1e-3, "ema": 0.0}
    assert len(rows) == 8 and all(split == "validation" for _, split in calls)
    assert all(c.seed == 0 and c.methods == ("cd",) for c, _ in calls)
    assert all(c.settings["1-rf-distilled"] == {"lr": 1e-2, "loss": "mse"} for c, _ in calls)   # others: chosen
    assert rows[0][1] == pytest.approx(2.5 + 0.07 + 0.5)          # lr 3e-4, ema 0.95; the mean of 1, 2, 3, 4: 2.5


@pytest.mark.parametrize("method", ["2-rf-distilled", "ot-2-rf", "cd"])
def test_a_search_trains_the_ancestors_once_and_reuses_them_unchanged(method, monkeypatch):
    cfg = replace(TINY, seed=0, methods=(method,), settings={method: {"lr": 1e-2}})
    ancestors = {}
    first = run_compare(cfg, "validation", ancestors)
    assert set(ancestors) == set(with_ancestors([method])) - {method}
    trained, train_flow = [], rf.train_flow
    monkeypatch.setattr(rf, "train_flow", lambda *a, **k: trained.append(k["desc"]) or train_flow(*a, **k))
    again = run_compare(cfg, "validation", ancestors)
    assert not set(trained) & set(ancestors) and set(again.metrics["stages"]) == {method}   # not retrained, not rescored
    for key in ("w2", "grad_steps", "ode_evals", "assign_s"):
        assert again.metrics["stages"][method][key] == first.metrics["stages"][method][key], key


def test_the_validation_score_is_the_mean_w2_over_the_step_counts_a_method_has():
    assert validation_score({"1": 1.0, "2": 2.0, "4": 4.0, "8": 5.0, "16": 100.0}) == 3.0
    assert validation_score({"1": 0.7}) == 0.7


@pytest.mark.parametrize("method", sorted(KNOBS))
def test_each_knob_reaches_the_training(method):
    """The method's other knob value (and, alone, another learning rate) changes its W2."""
    knob, (default, other) = KNOBS[method]

    def w2(settings):
        res = run_compare(replace(TINY, methods=(method,), settings={method: settings}))
        return res.metrics["stages"][method]["w2"]
    base = w2({})
    assert w2({knob: default}) == base
    assert w2({knob: other}) != base
    assert w2({"lr": 1e-2 if TINY.lr != 1e-2 else 1e-3}) != base


def test_tune_command_writes_its_search(tmp_path, capsys):
    out = tmp_path / "tune"
    assert main(["compare", "--tune", "ct", "--fast", "--iters", "10", "--distill-iters", "10", "--no-progress",
                 "--out", str(out)]) == 0
    record = json.loads((out / "tune_ct.json").read_text())
    assert record["fast"] and record["method"] == "ct" and len(record["rows"]) == 8
    assert record["best"] == min(record["rows"], key=lambda r: r["score"])["settings"]
    assert "chosen for ct" in capsys.readouterr().out


def test_tune_refuses_what_it_cannot_search_and_a_fast_run_over_a_full_one(tmp_path):
    r = run_module("toy", "compare", "--tune", "1-rf")
    assert r.returncode == 2 and "invalid choice: '1-rf'" in r.stderr, r.stderr
    (tmp_path / "tune_cd.json").write_text(json.dumps({"fast": False}))
    r = run_module("toy", "compare", "--tune", "cd", "--fast", "--out", str(tmp_path))
    assert r.returncode == 2 and "holds a full run (tune_cd.json)" in r.stderr, r.stderr
