"""The project installs: `pip install .` into a fresh virtual environment, then the commands run from
another folder, from the installed copy (not the checkout)."""
import os
import shutil
import subprocess
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pip_install_into_a_fresh_venv_then_run_from_anywhere(tmp_path):
    # a copy of what the package is built from, so the build leaves nothing in the checkout
    src = tmp_path / "src"
    for name in ("rectflow", "toy", "sd"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "figures"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # torch and the other dependencies come from this environment (no network, no second multi-GB torch)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # the new environment's bundled setuptools may predate building wheels without the `wheel` package:
    # the build uses this environment's (offline, no build isolation)
    subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "setuptools"], capture_output=True)
    r = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                        str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    shutil.rmtree(src)                                     # the installed copy must stand on its own
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "import sd, toy, rectflow, sd.models.unet; print(sd.__file__)"],
                           cwd=away, env=env, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr[-2000:]
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout
    for cmd in (["toy", "--help"], ["toy", "compare", "--help"], ["sd.generate", "--help"], ["sd.mini", "--help"]):
        r = subprocess.run([str(python), "-m", *cmd], cwd=away, env=env, capture_output=True, text=True)
        assert r.returncode == 0, (cmd, r.stderr[-2000:])
    page = subprocess.run([str(python), "-c", "from sd.web.server import STATIC; print(sorted(p.name for p in STATIC.iterdir()))"],
                          cwd=away, env=env, capture_output=True, text=True)
    assert page.stdout.strip() == "['demo.css', 'demo.js', 'index.html']", page.stderr[-2000:]   # the demo's page ships
