"""python -m sd.evaluate end to end on python -m sd.tiny's model, with FID's Inception and a CLIP model
written in their real layouts (random weights): the metrics are those of the images it wrote, image k is
caption k's with seed + k, a rerun regenerates nothing, torchrun with 2 gloo ranks agrees with one
process, reference statistics round-trip, and each bad input exits 2 with nothing written."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from sd.checkpoints.images import read_image
from sd.evaluate import main
from sd.evaluation import clip_score, frechet_distance, load_clip, load_inception, load_stats, statistics
from sd.evaluation.captions import CaptionsError, read_captions
from sd.evaluation.measure import for_inception
from sd.sampling.pipeline import load_pipeline
from sd.tiny import write_model
from tests.conftest import ROOT
from tests.tiny_sd import smooth_images, tiny_clip_folder
from sd.tiny import write_inception

pytest.importorskip("transformers")
COLOURS, SHAPES = ("red", "green", "blue"), ("circle", "square", "triangle")
N, SIZE = 10, 64


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    write_model(root / "tiny")
    write_inception(root / "pt_inception.pth")
    tiny_clip_folder(root / "clip")
    (root / "captions.txt").write_text("\n".join(f"a {c} {s}" for c in COLOURS for s in SHAPES) + "\n\nthe last one\n")
    (root / "ref").mkdir()
    from sd.cli import save_png
    for k, im in enumerate(smooth_images(6, 80, 96, seed=3)):        # not square: centre-cropped
        save_png(im, root / "ref" / f"{k}.png")
    return root


def args(files, out, *more):
    return ["--model", files / "tiny" / "model", "--captions", files / "captions.txt", "--n", N, "--out", out,
            "--inception", files / "pt_inception.pth", "--clip", files / "clip", "--ref-images", files / "ref",
            "--batch", 4, "--height", SIZE, "--width", SIZE, "--device", "cpu", *more]


def evaluate(*argv):
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def run(files):
    """One evaluation (shared by the claims below): its folder and metrics."""
    out = files / "run"
    assert evaluate(*args(files, out)) == 0
    return out, json.loads((out / "metrics.json").read_text())


def test_writes_images_metrics_and_grid(run):
    out, m = run
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{k:05d}.png" for k in range(N)]
    assert (out / "grid.png").is_file() and read_image(out / "grid.png").shape[0] > 300
    assert m["n"] == N and m["images_generated"] == N and m["world_size"] == 1
    assert m["seconds_per_image"] > 0 and m["configuration"]["steps"] == 1 and m["configuration"]["n"] == N


def test_the_metrics_are_those_of_the_images_written(files, run):
    """Recomputed here from the PNGs with the public pieces: FID against the reference folder, and the CLIP
    cosine of image k with caption k (not another caption)."""
    out, m = run
    images = [read_image(out / "images" / f"{k:05d}.png") for k in range(N)]
    refs = [read_image(f) for f in sorted((files / "ref").iterdir())]
    inception = load_inception(files / "pt_inception.pth")
    with torch.no_grad():
        fid = frechet_distance(*statistics(inception(for_inception(images)).double()),
                               *statistics(inception(for_inception(refs)).double()))
    clip = load_clip(files / "clip")
    captions = read_captions(files / "captions.txt", N)
    cos = clip_score(clip, clip.tokenizer, np.stack(images), captions)
    assert m["fid"] == pytest.approx(fid, rel=1e-9) and m["clip_score"] == pytest.approx(float(cos.mean()), rel=1e-9)
    # torchmetrics' scale: 100 x max(cos, 0) per image, then the mean (some cosines here are negative: the clamp counts)
    assert (cos < 0).any() and (cos > 0).any()
    assert m["clip_score_100"] == pytest.approx(float(100 * cos.clamp(min=0).mean()), rel=1e-9)
    shuffled = clip_score(clip, clip.tokenizer, np.stack(images), captions[1:] + captions[:1])
    assert abs(float(shuffled.mean()) - m["clip_score"]) > 1e-4


def test_image_k_is_caption_ks_with_seed_plus_k(files, run):
    out, _ = run
    pipe = load_pipeline(files / "tiny" / "model")
    captions = read_captions(files / "captions.txt")
    for k in (0, 7):
        want = pipe(captions[k], seed=k, height=SIZE, width=SIZE, progress=False).images[0].astype(int)
        got = read_image(out / "images" / f"{k:05d}.png").astype(int)
        assert np.abs(got - want).max() <= 1, k           # batched vs alone: the last bit may round apart


def test_a_rerun_regenerates_nothing_and_fills_gaps(files, run):
    out, m = run
    times = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    assert evaluate(*args(files, out)) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == times
    assert again["images_generated"] == 0 and again["fid"] == m["fid"]
    assert again["seconds_per_image"] == m["seconds_per_image"]       # kept from the run that timed it
    gap, record = out / "images" / "00004.png", (out / "metrics.json").read_bytes()
    kept = gap.read_bytes()
    gap.unlink()
    assert evaluate(*args(files, out)) == 0
    assert json.loads((out / "metrics.json").read_text())["images_generated"] == 1
    # made alone, not in its batch: a pixel may round to the next level, so the FID agrees to 1e-4
    assert json.loads((out / "metrics.json").read_text())["fid"] == pytest.approx(m["fid"], rel=1e-4)
    gap.write_bytes(kept)                                     # the shared run's folder as the other tests know it
    (out / "metrics.json").write_bytes(record)


def test_torchrun_with_two_ranks_agrees_with_one_process(files, run, tmp_path):
    _, m = run
    out = tmp_path / "ranks"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "sd.evaluate",
           *map(str, args(files, out))]
    cmd[cmd.index("--n")] = "--num-images"                 # torchrun's parser would take --n for its own
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads((out / "metrics.json").read_text())
    assert two["world_size"] == 2 and two["n"] == N and len(list((out / "images").iterdir())) == N
    assert two["images_generated"] == N                   # each rank made its share, none twice
    # the ranks batch other images together (and torchrun runs them on one thread each), so a pixel may
    # round to the next level; the metrics agree to 1e-4
    assert two["fid"] == pytest.approx(m["fid"], rel=1e-4) and two["clip_score"] == pytest.approx(m["clip_score"], rel=1e-4)


def test_reference_statistics_of_a_folder_give_the_same_fid(files, run, tmp_path):
    out, m = run
    assert evaluate("stats", "--images", files / "ref", "--inception", files / "pt_inception.pth",
                    "--out", tmp_path / "ref.npz", "--device", "cpu") == 0
    mu, sigma = load_stats(tmp_path / "ref.npz")
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)
    more = args(files, out)
    more[more.index("--ref-images"):more.index("--ref-images") + 2] = ["--ref-stats", tmp_path / "ref.npz"]
    assert evaluate(*more) == 0
    assert json.loads((out / "metrics.json").read_text())["fid"] == pytest.approx(m["fid"], rel=1e-9)


def test_images_that_are_not_square_are_centre_cropped():
    im = smooth_images(1, 80, 96, seed=4)[0]
    want = torch.from_numpy(np.ascontiguousarray(im[:, 8:88])).permute(2, 0, 1)[None].float() / 255
    want = torch.nn.functional.interpolate(want, size=(299, 299), mode="bilinear", align_corners=False)
    assert torch.equal(for_inception([im]), want)


def test_coco_captions_are_the_first_caption_of_each_image_by_id(tmp_path):
    data = {"images": [{"id": 9}, {"id": 2}, {"id": 5}],
            "annotations": [{"image_id": 5, "id": 1, "caption": "five a"}, {"image_id": 9, "id": 2, "caption": "nine"},
                            {"image_id": 2, "id": 3, "caption": " two a "}, {"image_id": 5, "id": 4, "caption": "five b"},
                            {"image_id": 2, "id": 5, "caption": "two b"}]}
    (tmp_path / "captions_val2017.json").write_text(json.dumps(data))
    assert read_captions(tmp_path / "captions_val2017.json") == ["two a", "five a", "nine"]
    assert read_captions(tmp_path / "captions_val2017.json", 2) == ["two a", "five a"]
    with pytest.raises(CaptionsError, match="--n 4: .* holds only 3 captions"):
        read_captions(tmp_path / "captions_val2017.json", 4)


def test_bad_input_exits_2_in_one_line_and_writes_nothing(files, run, tmp_path, capsys):
    out, _ = run
    metrics = (out / "metrics.json").read_bytes()
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "empty.txt").write_text("\n\n")
    np.savez(tmp_path / "mu_only.npz", mu=np.zeros(2048))
    torch.save({"fc.weight": torch.zeros(1000, 2048)}, tmp_path / "torchvision.pth")
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "0.png").write_bytes((files / "ref" / "0.png").read_bytes())

    def swap(flag, value, argv=None):
        argv = list(argv or args(files, tmp_path / "new"))
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
        return argv

    no_ref = args(files, tmp_path / "new")
    no_ref[no_ref.index("--ref-images"):no_ref.index("--ref-images") + 2] = ["--ref-stats", tmp_path / "mu_only.npz"]
    cases = {
        "missing captions": (swap("--captions", tmp_path / "none.txt"), "none.txt: no such file"),
        "malformed JSON": (swap("--captions", tmp_path / "bad.json"), "malformed JSON"),
        "not COCO": (swap("--captions", tmp_path / "list.json"), "not an MS-COCO captions file"),
        "no captions": (swap("--captions", tmp_path / "empty.txt"), "holds no caption"),
        "n too large": (swap("--n", 99), "--n 99: "),
        "wrong Inception": (swap("--inception", tmp_path / "torchvision.pth"), "not FID's Inception-v3 weights"),
        "not a CLIP folder": (swap("--clip", files / "ref"), "not a CLIP model folder"),
        "stats without sigma": (no_ref, "no array sigma"),
        "too few references": (swap("--ref-images", tmp_path / "one"), "FID needs at least 2"),
        "another configuration": (swap("--steps", 2, args(files, out)), "holds images of another configuration (steps 1 vs 2)"),
        "zero batch": (swap("--batch", 0), "--batch must be a positive integer"),
    }
    for name, (argv, words) in cases.items():
        assert evaluate(*argv) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], (name, err)
    assert not (tmp_path / "new").exists() and (out / "metrics.json").read_bytes() == metrics
    assert evaluate("stats", "--images", files / "ref", "--inception", files / "pt_inception.pth",
                    "--out", tmp_path / "ref.txt") == 2
    assert "written as .npz" in capsys.readouterr().err
