"""(text, noise, image) triplets from a teacher: InstaFlow's step (1), stored in shards, read on demand.

Sample j of a run is fixed by the run's configuration alone:
    prompt   line j of the prompts file (the non-empty lines)
    noise    X_0 = torch.randn(latent shape, generator seeded with seed + j)   (the project's seed convention)
    latents  X_1 = the teacher's sampler run from X_0 on the prompt
so a run can be resumed, or split over `torchrun` ranks, without changing a single sample, and X_0 need
not be stored: the trainer regenerates it from (seed, j), which costs little beside a UNet step.

On disk, `out/`:
    manifest.json               the configuration and the list of shards (written before any shard)
    shard-00000.safetensors     latents [n, C, h, w] (float32, or fp16 / bf16 with latent_dtype), ids [n, L] int32
                                (with store_noise, also noise [n, C, h, w] float32)
    prompts.index.safetensors   the byte offset of each prompt line (PromptFile; rebuilt when missing)
A shard is written to a temporary file and renamed, so a shard file that exists is complete; a
killed run leaves at most a *.tmp file, which never counts. Rank r of W writes shards r, r + W, ...

Reading: `open_triplets(folder)` reads the rows a batch asks for from the shard files (memory does not grow
with the dataset); `load(folder)` reads everything into memory (the mini's size).
"""
import hashlib
import json
import math
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checkpoints.safetensors_io import SafeOpen, SafetensorsError, save_file
from ..sampling.pipeline import noises

MANIFEST = "manifest.json"
PROMPT_INDEX = "prompts.index.safetensors"
LATENT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TripletError(ValueError):
    """A triplet folder that cannot be used: missing shards, a manifest that disagrees, bad prompts."""


def shard_name(i):
    return f"shard-{i:05d}.safetensors"


def read_prompts(path):
    """Non-empty lines of a UTF-8 text file, one prompt per line (a list: for small files; PromptFile for big ones)."""
    path = Path(path)
    if not path.is_file():
        raise TripletError(f"{path}: no such prompts file")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise TripletError(f"{path}: no prompts (one per line)")
    return prompts


class PromptFile:
    """The prompts of a text file of millions of lines, without holding them: an index of the byte offset of
    each non-empty line, built in one streaming pass (which also computes the prompts' SHA-256, the same
    digest as of read_prompts' list joined by newlines) and stored in `index` (a safetensors file); prompt
    j is read by seeking to its offset. An index that is missing, unreadable or of another version of the
    file (size or modification time differ) is rebuilt, and says so."""

    def __init__(self, path, index=None, progress=False):
        self.path = Path(path)
        if not self.path.is_file():
            raise TripletError(f"{self.path}: no such prompts file")
        stat = self.path.stat()
        self.stamp = {"size": str(stat.st_size), "mtime_ns": str(stat.st_mtime_ns)}
        loaded = self._read_index(index) if index is not None else None
        if loaded is None:
            self.offsets, self.sha256 = self._build(progress)
            if index is not None:
                save_file({"offsets": self.offsets}, index, metadata={**self.stamp, "sha256": self.sha256})
        else:
            self.offsets, self.sha256 = loaded
        if not len(self.offsets):
            raise TripletError(f"{self.path}: no prompts (one per line)")

    def _read_index(self, index):
        index = Path(index)
        if not index.exists():
            return None
        try:
            f = SafeOpen(index)
            meta = f.metadata()
            if {k: meta.get(k) for k in self.stamp} == self.stamp and "sha256" in meta:
                return f.get_tensor("offsets").clone(), meta["sha256"]
            print(f"{index}: made for another version of {self.path}: rebuilding it")
        except (SafetensorsError, KeyError, OSError) as e:
            print(f"{index}: unreadable ({e}): rebuilding it")
        return None

    def _build(self, progress):
        offsets, digest, first, pos = [], hashlib.sha256(), True, 0
        with open(self.path, "rb") as fh, tqdm(total=int(self.stamp["size"]), unit="B", unit_scale=True,
                                               desc="indexing prompts", disable=not progress) as bar:
            for raw in fh:
                text = raw.decode("utf-8").strip()
                if text:
                    offsets.append(pos)
                    digest.update(("" if first else "\n").encode() + text.encode("utf-8"))
                    first = False
                pos += len(raw)
                bar.update(len(raw))
        return torch.tensor(offsets, dtype=torch.int64), digest.hexdigest()

    def __len__(self):
        return len(self.offsets)

    def __getitem__(self, j):
        with open(self.path, "rb") as fh:
            fh.seek(int(self.offsets[j]))
            return fh.readline().decode("utf-8").strip()


def prompts_digest(prompts):
    """SHA-256 of the prompts joined by newlines (a PromptFile has it from its index)."""
    if isinstance(prompts, PromptFile):
        return prompts.sha256
    return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()


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


def shard_complete(path, count, keys=("latents", "ids")):
    """True for a readable shard holding `count` samples of each of `keys` (anything else is regenerated)."""
    try:
        entries = SafeOpen(path).entries                      # name -> (dtype, shape, begin, end)
        return all(k in entries and entries[k][1][0] == count for k in keys)
    except (SafetensorsError, OSError):
        return False


def stored_keys(manifest):
    return ("noise", "latents", "ids") if manifest["noise"] == "stored" else ("latents", "ids")


def generate(out, prompts, tokenizer, sample_batch, latent_shape, config, shard_size=256, batch_size=16, seed=0,
             rank=0, world=1, progress=True, latent_dtype="fp32", store_noise=False):
    """Write this rank's missing shards. `prompts`: a list or a PromptFile; `sample_batch(noise [b, C, h, w],
    ids [b, L]) -> latents` runs the teacher. `config` (teacher, sampler, steps, ...) goes into the manifest
    with the plan. Latents are stored in `latent_dtype` (fp32, fp16, bf16); the noise only with store_noise."""
    if latent_dtype not in LATENT_DTYPES:
        raise TripletError(f"latent dtype {latent_dtype!r}: choose {', '.join(LATENT_DTYPES)}")
    shards = plan(len(prompts), shard_size)
    manifest = {**config, "seed": seed, "num_samples": len(prompts), "prompts_sha256": prompts_digest(prompts),
                "shard_size": shard_size, "latent_shape": list(latent_shape), "latent_dtype": latent_dtype,
                "noise": "stored" if store_noise else "seed+j", "shards": shards}
    write_manifest(out, manifest)
    keys = stored_keys(manifest)
    mine = [s for i, s in enumerate(shards) if i % world == rank]
    todo = [s for s in mine if not shard_complete(Path(out) / s["file"], s["count"], keys)]
    bar = tqdm(total=sum(s["count"] for s in todo), desc=f"triplets (rank {rank})", disable=not progress)
    for s in todo:
        parts = {"noise": [], "latents": [], "ids": []}
        for first in range(s["first"], s["first"] + s["count"], batch_size):
            js = range(first, min(first + batch_size, s["first"] + s["count"]))
            x0 = noises(latent_shape, [seed + j for j in js])                         # X_0, one seed per sample
            ids = tokenizer([prompts[j] for j in js])
            with torch.no_grad():
                x1 = sample_batch(x0, ids)                                            # X_1 = teacher(X_0, prompt)
            parts["noise"].append(x0)
            parts["latents"].append(x1.float().cpu().to(LATENT_DTYPES[latent_dtype]))
            parts["ids"].append(ids.to(torch.int32))
            bar.update(len(js))
        save_file({k: torch.cat(parts[k]) for k in keys}, Path(out) / s["file"],
                  metadata={"first": str(s["first"]), "count": str(s["count"])})
    bar.close()
    return len(todo)


class Column:
    """One column of a triplet folder, read on demand: column[idx] reads rows idx (in that order) from the shard
    files with os.pread, as float32 (latents, noise) or int64 (ids); nothing is mapped or cached, so resident
    memory stays that of one batch whatever the dataset's size. For "noise" in a folder that does not store
    it, X_0 of sample j is regenerated from seed + j."""

    def __init__(self, name, shards, num_samples, row_shape, seed=None):
        self.name, self.shards, self.seed = name, shards, seed                  # shards: [(first, SafeOpen)]
        self.shape = (num_samples, *row_shape)
        self.firsts = torch.tensor([first for first, _ in shards])
        self.dtype = torch.int64 if name == "ids" else torch.float32
        # per shard: (path, byte offset of row 0, stored dtype)
        self.where = [(f.path, *f.data_offset(name)[:2]) for _, f in shards] if seed is None else None

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, idx):
        idx = torch.as_tensor(idx, dtype=torch.int64).reshape(-1)
        if self.seed is not None:                   # X_0 = noise of seed + j (generate's convention)
            return noises(self.shape[1:], (self.seed + idx).tolist())
        out = torch.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        which = torch.searchsorted(self.firsts, idx, right=True) - 1             # the shard of each row
        for s in which.unique().tolist():
            sel = torch.nonzero(which == s).flatten()
            path, start, stored = self.where[s]
            row = stored.itemsize * math.prod(self.shape[1:])
            fd = os.open(path, os.O_RDONLY)
            try:
                raw = b"".join(os.pread(fd, row, start + row * int(r)) for r in idx[sel] - self.firsts[s])
            finally:
                os.close(fd)
            if len(raw) != row * len(sel):
                raise TripletError(f"{path}: {self.name}: the file ended early (truncated after it was checked?)")
            out[sel] = torch.frombuffer(bytearray(raw), dtype=stored).reshape(len(sel), *self.shape[1:]).to(self.dtype)
        return out


def _manifest(folder):
    folder = Path(folder)
    f = folder / MANIFEST
    if not f.exists():
        raise TripletError(f"{folder}: no {MANIFEST}: not a triplet folder (make one with `python -m sd.reflow generate`)")
    try:
        manifest = json.loads(f.read_text())
    except ValueError as e:
        raise TripletError(f"{f}: not JSON ({e})") from None
    missing = [k for k in ("noise", "latent_dtype", "shards") if k not in manifest]
    if missing:
        raise TripletError(f"{f}: not a manifest of `python -m sd.reflow generate` (no {', '.join(missing)})")
    keys = stored_keys(manifest)
    missing = [s["file"] for s in manifest["shards"] if not shard_complete(folder / s["file"], s["count"], keys)]
    if missing:
        raise TripletError(f"{folder}: {len(missing)} of {len(manifest['shards'])} shards missing or incomplete "
                           f"(first: {missing[0]}); run the same `generate` command again to finish them")
    return manifest, keys


def open_triplets(folder):
    """A triplet folder read on demand: {"latents", "ids", "noise"} Columns (noise regenerated when not stored)
    and the manifest. Every shard is checked against the manifest (sample counts, latent shape) first; only
    the shards' headers are read."""
    folder = Path(folder)
    manifest, keys = _manifest(folder)
    shards, shape = [], tuple(manifest["latent_shape"])
    for s in manifest["shards"]:
        f = SafeOpen(folder / s["file"])
        got = tuple(f.entries["latents"][1][1:])
        if got != shape:
            raise TripletError(f"{folder / s['file']}: latents of shape {got}, but the manifest says {shape}")
        shards.append((s["first"], f))
    n, length = manifest["num_samples"], shards[0][1].entries["ids"][1][1]
    data = {"latents": Column("latents", shards, n, shape), "ids": Column("ids", shards, n, (length,)),
            "noise": Column("noise", shards, n, shape, None if "noise" in keys else manifest["seed"])}
    return data, manifest


def load(folder):
    """All triplets of a finished run in memory: {"noise", "latents" (float32), "ids" (int64)} and the manifest."""
    data, manifest = open_triplets(folder)
    everything = torch.arange(manifest["num_samples"])
    return {k: col[everything] for k, col in data.items()}, manifest
