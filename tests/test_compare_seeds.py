"""bench/compare_seeds.py: the multi-seed table of the default compare (mean ± standard deviation, the best method
at each seed), its reuse of finished seeds, and its refusals before any training."""
import json
import statistics

import pytest

from bench import compare_seeds
from toy.compare import CompareConfig
from toy.experiment import config_record


def record(seed, w2_1, w2_2, shares):
    """A compare's metrics with two methods: a flow scored at 1 and 2 steps, a one-step student."""
    return {"config": {"steps": [1, 2], "seed": seed},
            "stages": {"flow": {"straightness": 10.0 * seed, "w2": {"1": w2_1, "2": w2_2}, "mode_shares_1": shares},
                       "student": {"w2": {"1": 1.0}, "mode_shares_1": [0.5, 0.5]}},
            "best": {"1": "student" if w2_1 > 1.0 else "flow", "2": "flow"}}


def test_the_table_is_mean_and_standard_deviation_over_seeds_and_the_best_method_per_seed():
    records = [record(0, 3.0, 2.0, [0.2, 0.8]), record(1, 0.5, 4.0, [0.4, 0.6]), record(2, 2.5, 3.0, [0.0, 1.0])]
    rows = compare_seeds.summary(records, [1, 2])
    assert rows["flow"]["w2"][1] == (pytest.approx(2.0), pytest.approx(statistics.stdev([3.0, 0.5, 2.5])))
    assert rows["flow"]["w2"][2][0] == pytest.approx(3.0) and 2 not in rows["student"]["w2"]
    assert rows["flow"]["min_share"] == pytest.approx(0.2)                   # mean of 0.2, 0.4, 0.0
    assert rows["flow"]["S"] == (pytest.approx(10.0), pytest.approx(10.0)) and rows["student"]["S"] is None
    assert compare_seeds.best_per_seed(records, [1, 2]) == {1: ["student", "flow", "student"], 2: ["flow"] * 3}
    text = compare_seeds.markdown(records, [0, 1, 2])
    assert "| flow | 10 ± 10 | 2.000 ± 1.323 | 3.000 ± 1.000 | 0.200 |" in text
    assert "| student | — | 1.000 ± 0.000 | — | 0.500 |" in text
    assert "| 1 | student / flow / student |" in text


def test_the_mode_share_figure_shows_each_seeds_smallest_share(tmp_path):
    records = [record(0, 3.0, 2.0, [0.2, 0.8]), record(1, 0.5, 4.0, [0.4, 0.6])]
    fig = compare_seeds.mode_share_figure(records, [0, 1], tmp_path / "shares.png")
    points = [c.get_offsets() for c in fig.axes[0].collections]                  # one scatter per seed
    assert [[round(float(y), 6) for y in p[:, 1]] for p in points] == [[0.2, 0.5], [0.4, 0.5]]
    assert (tmp_path / "shares.png").stat().st_size > 1000


def test_a_finished_seed_is_reused_only_if_made_with_todays_configuration(tmp_path, monkeypatch):
    ran = []

    class Res:
        metrics = {"config": "fresh"}
    monkeypatch.setattr(compare_seeds, "run_compare", lambda cfg: ran.append(cfg.seed) or Res())
    today = config_record(CompareConfig(seed=0, progress=False))
    (tmp_path / "seed0.json").write_text(json.dumps({"config": today, "stages": {}}))
    stale = {**today, "settings": {"cd": {"lr": 0.5}}}
    (tmp_path / "seed1.json").write_text(json.dumps({"config": {**stale, "seed": 1}, "stages": {}}))
    assert compare_seeds.seed_record(0, tmp_path)["config"] == today
    assert compare_seeds.seed_record(1, tmp_path) == {"config": "fresh"}
    assert ran == [1] and json.loads((tmp_path / "seed1.json").read_text()) == {"config": "fresh"}


@pytest.mark.parametrize("argv, message", [(["--seeds", "0"], "at least two seeds"),
                                           (["--seeds", "0,x"], "comma-separated integers"),
                                           (["--out", "FILE"], "is a file, not a folder")])
def test_bad_arguments_are_refused_in_one_line_before_any_training(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compare_seeds, "run_compare", lambda cfg: pytest.fail("trained before refusing"))
    (tmp_path / "FILE").write_text("")
    argv = [str(tmp_path / "FILE") if a == "FILE" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        compare_seeds.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err, err
