"""What the demo server generates with: a Pipeline (InstaFlow, 2-RF, SD, sd.tiny, ...), or the mini
InstaFlow's three models side by side. Each backend has info(), limits() and generate(params) -> dict
with PNG data URLs (a Pipeline with an SDXL Refiner also refine(params)); the server (sd/web/server.py)
has checked `params` against limits() first, which also names the fields a backend takes."""
import base64
import io
import json
import random
import time
from pathlib import Path

import torch

from .server import FIELDS

PROMPT_CHARS = 1000


def png_data_url(image):
    """uint8 [H, W, 3] -> "data:image/png;base64,..." (matplotlib writes the PNG, as sd.generate does)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, image, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def pick_seed(params):
    return params["seed"] if "seed" in params else random.randrange(2**31)


class PipelineBackend:
    """One model: one image per request, with the pipeline's timings."""

    def __init__(self, pipe, name, steps=1, guidance=1.0, size=512, sampler="euler", max_side=1024, refine=None):
        self.pipe, self.name, self.sampler, self.max_side = pipe, name, sampler, max_side
        self.defaults = {"steps": steps, "guidance": guidance, "height": size, "width": size, "negative_prompt": ""}
        # with pipe.refiner set: Refiner.refine's defaults (InstaFlow's demo: 0.3 of 50 steps, guidance 5, at 1024)
        self.refine_defaults = {"strength": 0.3, "steps": 50, "guidance": 5.0, "size": 1024, **(refine or {})}

    def info(self):
        return {"mode": "model", "model": self.name, "sampler": self.sampler, "dtype": str(self.pipe.dtype).split(".")[-1],
                "device": str(self.pipe.device), "defaults": self.defaults, "models": [self.name],
                "refiner": None if self.pipe.refiner is None else str(self.pipe.refiner.path),
                "refine_defaults": self.refine_defaults if self.pipe.refiner is not None else None}

    def limits(self):
        return {"fields": list(FIELDS), "prompt_chars": PROMPT_CHARS, "steps": (1, 50), "guidance": (0.0, 30.0), "side": (16, self.max_side),
                "multiple": 8}

    def _generate(self, params):
        p = {**self.defaults, **params}
        seed = pick_seed(params)
        t0 = time.perf_counter()
        out = self.pipe(p["prompt"], negative_prompt=p["negative_prompt"] or None, steps=p["steps"],
                        guidance=p["guidance"], seed=seed, height=p["height"], width=p["width"], sampler=self.sampler,
                        progress=False)
        total = time.perf_counter() - t0
        return {"image": png_data_url(out.images[0]), "seed": seed,
                "seconds": {**out.seconds, "total": total}}, out

    def generate(self, params):
        return self._generate(params)[0]

    def refine(self, params):
        """The image of `params` (the same seed gives it again), then the SDXL Refiner on it (`strength` from
        params, the rest from refine_defaults): its image, the one-step image's timings and the refiner's."""
        if self.pipe.refiner is None:
            raise ValueError("no refiner: start the demo with --refiner PATH")
        first, out = self._generate(params)
        r = {**self.refine_defaults, **({"strength": params["strength"]} if "strength" in params else {})}
        t0 = time.perf_counter()
        refined = self.pipe.refine(out.images[0], params["prompt"], size=r.pop("size") or None,
                                   negative_prompt=params.get("negative_prompt") or None, seed=first["seed"],
                                   progress=False, **r)
        return {"image": png_data_url(refined.images[0]), "seed": first["seed"], "strength": r["strength"],
                "seconds": {**first["seconds"], "refine": {**refined.seconds, "total": time.perf_counter() - t0}}}


class MiniBackend:
    """The mini InstaFlow run in `folder` (python -m sd.mini): its teacher (DPM-Solver++ with CFG), the
    2-RF and the one-step student on the same noise; size, steps and guidance are each model's own."""

    def __init__(self, folder):
        from sd.mini.run import load_models
        self.folder = Path(folder)
        cfg = json.loads((self.folder / "config.json").read_text())
        self.size, self.guidance, self.teacher_steps = cfg["size"], cfg["guidance"], cfg["teacher_steps"]
        self.tok, self.text, teacher, rf2, student = load_models(folder)
        self.models = [(f"teacher, {self.teacher_steps} steps (CFG {self.guidance:g})", teacher, self.teacher_steps,
                        self.guidance, "dpm++"),
                       ("2-RF, 1 step", rf2, 1, 1.0, "euler"), ("InstaFlow student, 1 step", student, 1, 1.0, "euler")]

    def info(self):
        return {"mode": "mini", "model": str(self.folder), "sampler": "dpm++ / euler", "dtype": "float32", "device": "cpu",
                "defaults": {"height": self.size, "width": self.size}, "models": [m[0] for m in self.models]}

    def limits(self):
        return {"fields": ["prompt", "seed"], "prompt_chars": 200,
                "fixed": "--mini: each model samples with its own steps, guidance and size, without a negative prompt"}

    @torch.no_grad()
    def generate(self, params):
        from sd.mini.run import context_fn
        from sd.sampling.loop import sample
        from sd.sampling.pipeline import noise, to_uint8
        seed = pick_seed(params)
        x0 = noise((1, 3, self.size, self.size), seed)
        ids = self.tok([params["prompt"]])
        images = []
        for name, net, steps, g, sampler in self.models:
            t0 = time.perf_counter()
            x = sample(net, context_fn(self.text, self.tok, g)(ids), x0.clone(), steps, g, sampler)
            images.append({"model": name, "image": png_data_url(to_uint8(x)[0]),
                           "seconds": {"total": time.perf_counter() - t0}})
        return {"images": images, "seed": seed}
