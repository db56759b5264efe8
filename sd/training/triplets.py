"""(text, noise, image) triplets from a teacher: InstaFlow's step (1), stored in shards.

Sample j of a run is fixed by the run's configuration alone:
    prompt   line j of the prompts file
    noise    X_0 = torch.randn(latent shape, generator seeded with seed + j)   (the project's seed convention)
    latents  X_1 = the teacher's sampler run from X_0 on the prompt
so a run can be resumed, or split over `torchrun` ranks, without changing a single sample.

On disk, `out/`:
    manifest.json               the configuration and the list of shards (written before any shard)
    shard-00000.safetensors     noise [n, C, h, w] float32, latents [n, C, h, w] float32, ids [n, L] int32
A shard is written to a temporary file and renamed, so a shard file that exists is complete; a
killed run leaves at most a *.tmp file, which never counts. Rank r of W writes shards r, r + W, ...
"""
import hashlib
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checkpoints.safetensors_io import SafeOpen, SafetensorsError, save_file
from ..sampling.pipeline import noise

MANIFEST = "manifest.json"


class TripletError(ValueError):
    """A triplet folder that cannot be used: missing shards, a manifest that disagrees, bad prompts."""


def shard_name(i):
    return f"shard-{i:05d}.safetensors"


def read_prompts(path):
    """Non-empty lines of a UTF-8 text file, one prompt per line."""
    path = Path(path)
    if not path.is_file():
        raise TripletError(f"{path}: no such prompts file")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise TripletError(f"{path}: no prompts (one per line)")
    return prompts


def plan(num_samples, shard_size):
    """The shards of a run: [{"file", "first", "count"}], consecutive sample ranges."""
    return [{"file": shard_name(i), "first": first, "count": min(shard_size, num_samples - first)}
            for i, first in enumerate(range(0, num_samples, shard_size))]


def write_manifest(out, config):
    """Write the manifest, or check that an existing one describes the same run (resume)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    f = out / MANIFEST
    if f.exists():
        old = json.loads(f.read_text())
        diff = [k for k in sorted(set(old) | set(config)) if old.get(k) != config.get(k)]
        if diff:
            k = diff[0]
            raise TripletError(f"{f}: this folder holds a different run ({k}: {old.get(k)!r} there, {config.get(k)!r} "
                               f"now); use another --out or delete it")
        return
    tmp = f.with_name(f.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=1))
    tmp.replace(f)


def shard_complete(path, count):
    """True for a readable shard holding `count` samples (anything else is regenerated)."""
    try:
        entries = SafeOpen(path).entries                      # name -> (dtype, shape, begin, end)
        return all(k in entries and entries[k][1][0] == count for k in ("noise", "latents", "ids"))
    except (SafetensorsError, OSError):
        return False


def generate(out, prompts, tokenizer, sample_batch, latent_shape, config, shard_size=256, batch_size=16, seed=0,
             rank=0, world=1, progress=True):
    """Write this rank's missing shards. `sample_batch(noise [b, C, h, w], ids [b, L]) -> latents`
    runs the teacher. `config` (teacher, sampler, steps, ...) goes into the manifest with the plan."""
    shards = plan(len(prompts), shard_size)
    digest = hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()     # the prompts, without storing them
    write_manifest(out, {**config, "seed": seed, "num_samples": len(prompts), "prompts_sha256": digest,
                         "shard_size": shard_size, "latent_shape": list(latent_shape), "shards": shards})
    mine = [s for i, s in enumerate(shards) if i % world == rank]
    todo = [s for s in mine if not shard_complete(Path(out) / s["file"], s["count"])]
    bar = tqdm(total=sum(s["count"] for s in todo), desc=f"triplets (rank {rank})", disable=not progress)
    for s in todo:
        parts = {"noise": [], "latents": [], "ids": []}
        for first in range(s["first"], s["first"] + s["count"], batch_size):
            js = range(first, min(first + batch_size, s["first"] + s["count"]))
            x0 = torch.cat([noise((1, *latent_shape), seed + j) for j in js])          # X_0, one seed per sample
            ids = tokenizer([prompts[j] for j in js])
            with torch.no_grad():
                x1 = sample_batch(x0, ids)                                            # X_1 = teacher(X_0, prompt)
            parts["noise"].append(x0)
            parts["latents"].append(x1.float().cpu())
            parts["ids"].append(ids.to(torch.int32))
            bar.update(len(js))
        save_file({k: torch.cat(v) for k, v in parts.items()}, Path(out) / s["file"],
                  metadata={"first": str(s["first"]), "count": str(s["count"])})
    bar.close()
    return len(todo)


def load(folder):
    """All triplets of a finished run: {"noise", "latents", "ids" (int64)} and the manifest."""
    folder = Path(folder)
    f = folder / MANIFEST
    if not f.exists():
        raise TripletError(f"{folder}: no {MANIFEST}: not a triplet folder (make one with `python -m sd.reflow generate`)")
    manifest = json.loads(f.read_text())
    missing = [s["file"] for s in manifest["shards"] if not shard_complete(folder / s["file"], s["count"])]
    if missing:
        raise TripletError(f"{folder}: {len(missing)} of {len(manifest['shards'])} shards missing or incomplete "
                           f"(first: {missing[0]}); run the same `generate` command again to finish them")
    parts = {"noise": [], "latents": [], "ids": []}
    for s in manifest["shards"]:
        with SafeOpen(folder / s["file"]) as sh:
            for k in parts:
                parts[k].append(sh.get_tensor(k).clone())
    data = {k: torch.cat(v) for k, v in parts.items()}
    data["ids"] = data["ids"].long()
    return data, manifest
