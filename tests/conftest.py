import fcntl
import os
import sys
from pathlib import Path

# CI runs the suite on two pytest-xdist workers over two cores: one thread each (and in the commands they
# start), as two processes of two OpenMP threads on two cores slow each other several times over.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def reference_libraries():
    """Skip where diffusers or transformers (the oracles) are missing."""
    pytest.importorskip("transformers")
    pytest.importorskip("diffusers")


# The slowest modules first: with --no-loadscope-reorder (README, .ci/run) pytest-xdist hands out modules in this
# order, so that the default comparison starts at once instead of last, behind a hundred short modules. Each worker
# starts with two modules: the third and fourth are short ones.
SLOW_FIRST = ("test_compare.py", "test_cuda_check.py", "test_layout.py", "test_docs.py", "test_notebooks.py",
              "test_controlnet.py", "test_pipeline.py", "test_demo.py", "test_first_hour.py", "test_mini.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))    # stable: each module keeps its order


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny SD-layout model folder: unet/, vae/, text_encoder/, tokenizer/ (byte-level vocabulary), and the
    diffusers/transformers modules saved in it: (root, unet, vae, text, tok). Shared by the pipeline tests."""
    reference_libraries()
    from tests.sd_oracles import ref_unet, ref_vae
    from tests.tiny_sd import byte_tokenizer, tiny_text_encoder
    root = tmp_path_factory.mktemp("tiny-instaflow")
    unet, vae = ref_unet(), ref_vae()
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    tok = byte_tokenizer(root / "tokenizer")
    torch.manual_seed(3)
    text = tiny_text_encoder(tok)
    text.save_pretrained(root / "text_encoder")
    return root, unet, vae, text, tok


@pytest.fixture(scope="module")
def refiner(tmp_path_factory):
    """A tiny random SDXL refiner folder and diffusers' img2img pipeline on it (tests/tiny_sd.py)."""
    reference_libraries()
    from tests.tiny_sd import tiny_refiner_folder
    return tiny_refiner_folder(tmp_path_factory.mktemp("refiner"))


def once_per_run(tmp_path_factory, name, make):
    """The folder `name`, filled by `make(folder)` once per test run: under pytest-xdist the first worker to ask
    makes it while the others wait on a lock, then all read it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent                   # the workers' base folders share this parent
    folder = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / f"{name}.done").exists():
            folder.mkdir()
            make(folder)
            (root / f"{name}.done").touch()
    return folder


@pytest.fixture(scope="session")
def mini_fast(tmp_path_factory):
    """One `python -m sd.mini --fast` run for the whole test run: its folder `run` and its standard output in
    `stdout.txt`. Read only: test_mini checks it (and reruns a copy), test_demo serves it."""
    import subprocess

    def make(folder):
        r = subprocess.run([sys.executable, "-m", "sd.mini", "--fast", "--out", str(folder / "run")],
                           capture_output=True, text=True, cwd=ROOT, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        (folder / "stdout.txt").write_text(r.stdout)

    return once_per_run(tmp_path_factory, "mini-fast", make)


@pytest.fixture(scope="module")
def reflow_folder(tmp_path_factory):
    """A tiny SD folder saved by diffusers (tests/tiny_sd.py), the teacher of the training tests."""
    reference_libraries()
    from tests.tiny_sd import tiny_sd_folder
    return tiny_sd_folder(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def reflow_data(reflow_folder, tmp_path_factory):
    """A triplet folder made by `sd.reflow generate` from the tiny teacher of reflow_folder (tests/sd_training.py)."""
    from sd.reflow import main as reflow_main
    from tests.sd_training import GEN, PROMPTS
    root = tmp_path_factory.mktemp("triplets")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n\n")        # blank lines are skipped
    reflow_main(["generate", "--teacher", str(reflow_folder), "--prompts", str(root / "prompts.txt"), "--out", str(root / "t"),
                 *GEN])
    return root
