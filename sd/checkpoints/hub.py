"""Model ids such as "XCLiu/instaflow_0_9B_from_sd_1_5", found in the local Hugging Face cache.

Students download weights once (`huggingface-cli download XCLiu/instaflow_0_9B_from_sd_1_5`, or
`hf download ...`, or a Colab cell) and then pass the id. The cache is read here without any hub library
and without the network; its layout is

    $HF_HUB_CACHE  (else $HF_HOME/hub, else ~/.cache/huggingface/hub)
        models--XCLiu--instaflow_0_9B_from_sd_1_5/
            refs/main                   the commit hash of the revision "main"
            snapshots/<commit hash>/    the files of that revision (links into blobs/)

`owner/name@revision` picks another branch or tag (refs/<revision>) or a commit hash (snapshots/<hash>).
"""
import os
import re
from pathlib import Path

MODEL_ID = re.compile(r"^([A-Za-z0-9][\w.-]*)/([\w.-]+?)(?:@([\w./-]+))?$")


class ModelNotFound(ValueError):
    """Neither a local path nor a model id present in the Hugging Face cache."""


def hub_cache():
    """The cache folder the Hugging Face libraries use, from the same environment variables."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def resolve_model(path):
    """A local path as it is when it exists; else an "owner/name[@revision]" id -> its snapshot folder
    in the cache. Raises ModelNotFound saying where it looked and how to download the model."""
    path = Path(path)
    if path.exists():
        return path
    m = MODEL_ID.match(str(path))
    if m is None:
        raise ModelNotFound(f"{path}: no such file or folder")
    owner, name, revision = m[1], m[2], m[3] or "main"
    repo = hub_cache() / f"models--{owner}--{name}"
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo / "snapshots" / commit
    if snapshot.is_dir():
        return snapshot
    looked = f"{snapshot}" if ref.is_file() else f"{ref} and {snapshot}"
    raise ModelNotFound(
        f"{path}: no such file or folder, and model {owner}/{name} (revision {revision}) is not in the Hugging Face "
        f"cache (looked for {looked}). Download it first, e.g. `huggingface-cli download {owner}/{name}` "
        f"(or `hf download {owner}/{name}`), or set HF_HOME / HF_HUB_CACHE to the cache that holds it, or pass "
        f"a local folder or file")
