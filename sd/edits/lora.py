"""LoRA files merged into the UNet and the text encoder, and taken out again bit-exactly.

A LoRA stores, for some weight matrices W [out, in] (or conv kernels [out, in, kh, kw]), a low-rank
update: `down` [r, in (, kh, kw)] and `up` [out, r (, 1, 1)], and a number alpha. Merging it is

    W <- W + scale * (alpha / r) * up @ down        (alpha absent -> alpha = r)          (LoRA, Eq. 3)

with the product reshaped to W's shape for convolutions (a 3x3 "LoCon" down with a 1x1 up gives a 3x3
update). The formats read here, safetensors through our reader (or .bin through the safe path):

    kohya / CivitAI  lora_unet_<module path, '.' -> '_'>.lora_down.weight / .lora_up.weight / .alpha
                     lora_te_text_model_<...>                       (the text encoder)
    diffusers, peft  unet.<module path>.lora_A.weight / .lora_B.weight  (text_encoder.<...>), alpha in
                     the file's "lora_adapter_metadata" (lora_alpha, alpha_pattern) or in .alpha keys
    older diffusers  unet.<module path>.lora.down.weight / .lora.up.weight (and the attention-processor
                     spelling ...attn1.processor.to_q_lora.down.weight)

kohya joins module names with '_', which module names themselves contain (down_blocks, to_q): the name
is looked up in a table built from the model's own module names, never guessed. Every pair is checked
(module found, Linear or Conv2d, shapes fit) before any weight changes; the first touch of a weight
keeps a copy of it, so `unload_lora` restores the original tensors exactly.
"""
import json
import re
from pathlib import Path

import torch
from torch import nn

from ..checkpoints.loaders import CheckpointError, holds, read_weights
from ..checkpoints.safetensors_io import SafeOpen, SafetensorsError


class LoraError(ValueError):
    """A LoRA file that cannot be merged; the message names the file and the keys."""


COMPONENTS = ("unet", "text_encoder")
# kohya / peft / old diffusers spellings of (down, up)
PAIRS = ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight"),
         (".lora.down.weight", ".lora.up.weight"))
OTHER_KINDS = {"hada_": "LoHa", "lokr_": "LoKr", "lora_mid": "LoCon with a Tucker core (lora_mid)",
               "dora_scale": "DoRA", "lora_magnitude_vector": "DoRA", "lora_B.bias": "LoRA with biases"}
# old diffusers attention-processor names -> module names
OLD_NAMES = [(".processor.", "."), ("to_q_lora", "to_q.lora"), ("to_k_lora", "to_k.lora"), ("to_v_lora", "to_v.lora"),
             ("to_out_lora", "to_out.0.lora"), ("lora_linear_layer", "lora")]
OLD_TEXT_NAMES = [("self_attn.to_q.", "self_attn.q_proj."), ("self_attn.to_k.", "self_attn.k_proj."),
                  ("self_attn.to_v.", "self_attn.v_proj."), ("self_attn.to_out.0.", "self_attn.out_proj.")]


def layers(pipe):
    """{(component, module name): module} for every Linear and Conv2d of the UNet and the text encoder,
    in our names (the text encoder's without transformers' leading 'text_model.')."""
    return {(c, n): m for c in COMPONENTS for n, m in getattr(pipe, c).named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d))}


def kohya_table(table):
    """kohya's underscore-joined names -> (component, module name), from the model's own names."""
    out = {}
    for c, n in table:
        key = ("lora_unet_" + n if c == "unet" else "lora_te_text_model_" + n).replace(".", "_")
        if key in out:
            raise LoraError(f"two modules share the kohya name {key}: {out[key][1]} and {n}")
        out[key] = (c, n)
    return out


def _read(path):
    """(tensors, metadata) of a LoRA file; a file that cannot be read is a LoraError naming it."""
    path = Path(path)
    if not path.is_file():
        raise LoraError(f"{path}: no such LoRA file")
    try:
        if path.suffix == ".safetensors":
            f = SafeOpen(path)
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
        return read_weights(path), {}
    except (SafetensorsError, CheckpointError) as e:
        raise LoraError(f"{path}: not a readable LoRA file: {e}") from None


def _alphas_from_metadata(meta, path):
    """{component: (lora_alpha, alpha_pattern)} from diffusers' "lora_adapter_metadata" (peft's LoraConfig)."""
    if "lora_adapter_metadata" not in meta:
        return {}
    try:
        cfg = json.loads(meta["lora_adapter_metadata"])
    except json.JSONDecodeError as e:
        raise LoraError(f"{path}: lora_adapter_metadata is not JSON: {e}") from None
    out = {}
    for c in COMPONENTS:
        if cfg.get(f"{c}.use_dora") or cfg.get(f"{c}.use_rslora"):
            raise LoraError(f"{path}: {c} uses {'DoRA' if cfg.get(f'{c}.use_dora') else 'rsLoRA'}, not supported")
        if f"{c}.lora_alpha" in cfg:
            out[c] = (float(cfg[f"{c}.lora_alpha"]), cfg.get(f"{c}.alpha_pattern") or {})
    return out


def _normalize(key):
    """An old diffusers key in today's module names (attn1.processor.to_q_lora.down -> attn1.to_q.lora.down)."""
    comp = key.partition(".")[0]
    if comp not in COMPONENTS:
        return key
    for old, new in OLD_NAMES + (OLD_TEXT_NAMES if comp == "text_encoder" else []):
        key = key.replace(old, new)
    return key


def _module_of(stem, kohya, table):
    """(component, module name) that a key's stem names, or None. kohya's lora_te1_ (SDXL's first text
    encoder, CLIP ViT-L as SD 1.x's) names what lora_te_ names."""
    if stem.startswith("lora_te1_"):
        stem = "lora_te_" + stem[len("lora_te1_"):]
    if stem in kohya:
        return kohya[stem]
    comp, _, name = stem.partition(".")
    name = name.removeprefix("text_model.") if comp == "text_encoder" else name
    return (comp, name) if (comp, name) in table else None


def read_lora(path, pipe):
    """The updates of a LoRA file, checked against the pipeline: a list of
    ((component, module name), its weight, up [out, r], down [r, in * kh * kw] in float32, alpha / r).
    Raises LoraError naming the file and every key that names no module or does not fit."""
    raw, meta = _read(path)
    tensors = {_normalize(k): v for k, v in raw.items()}
    original = dict(zip(tensors, raw))                     # for messages: the key as the file spells it
    table = layers(pipe)
    kohya = kohya_table(table)
    meta_alpha = _alphas_from_metadata(meta, path)
    for key in raw:
        for mark, kind in OTHER_KINDS.items():
            if mark in key:
                raise LoraError(f"{path}: key {key}: a {kind} file, not supported (plain LoRA / LoCon only)")
    found, used, problems = [], set(), []
    for key in sorted(tensors):
        pair = next((p for p in PAIRS if key.endswith(p[0])), None)
        if pair is None:
            continue
        stem = key[:-len(pair[0])]
        up_key = stem + pair[1]
        used.update(k for k in (key, stem + ".alpha") if k in tensors)
        target = _module_of(stem, kohya, table)
        if target is None:
            problems.append(f"{original[key]}: names no module of the UNet or the text encoder")
            continue
        if up_key not in tensors:
            problems.append(f"{original[key]}: its pair {up_key} is missing")
            continue
        used.add(up_key)
        down, up, w = tensors[key].float(), tensors[up_key].float(), table[target].weight
        r = down.shape[0]
        if down.ndim not in (2, 4) or up.ndim != down.ndim or up.shape[1] != r or up[0].numel() != r \
                or up.shape[0] != w.shape[0] or down[0].numel() != w[0].numel():
            problems.append(f"{original[key]}: down {tuple(down.shape)} / up {tuple(up.shape)} do not fit "
                            f"{target[0]}.{target[1]}.weight {tuple(w.shape)}")
            continue
        alpha_key = stem + ".alpha"
        if alpha_key in tensors:
            alpha = float(tensors[alpha_key])
        elif target[0] in meta_alpha:                       # peft: lora_alpha, or alpha_pattern's match
            alpha, pattern = meta_alpha[target[0]]
            alpha = next((float(a) for p, a in pattern.items() if re.fullmatch(rf"(.*\.)?{p}", target[1])), alpha)
        else:
            alpha = float(r)                                # no alpha stored: alpha = r, scale 1
        found.append((target, w, up.reshape(up.shape[0], r), down.reshape(r, -1), alpha / r))
    if not used:
        raise LoraError(f"{path}: not a LoRA file (no lora_down/lora_up, lora_A/lora_B or lora.down/lora.up keys; "
                        f"it holds {holds(raw)})")
    problems += [f"{original[k]}: not part of a LoRA pair" for k in sorted(set(tensors) - used)]
    if problems:
        raise LoraError(f"{path}: does not fit this model, nothing was changed ({len(problems)} problem(s)):\n  "
                        + "\n  ".join(problems[:12]) + ("\n  ..." if len(problems) > 12 else ""))
    return found


@torch.no_grad()
def load_lora(pipe, path, scale=1.0):
    """Merge a LoRA into pipe.unet / pipe.text_encoder in place: W <- W + scale (alpha / r) up @ down,
    in float32, rounded once to W's dtype. Several LoRAs stack (each adds its update). The first time
    a weight is touched its original is kept in pipe.lora_originals for unload_lora."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise LoraError(f"{path}: scale must be a number, got {scale!r}")
    updates = read_lora(path, pipe)                      # everything checked before anything changes
    for key, w, up, down, ratio in updates:                    # one update in memory at a time
        pipe.lora_originals.setdefault(key, w.detach().clone())
        delta = (up.to(w.device) @ down.to(w.device)).reshape(w.shape)                     # up @ down
        w.copy_((w.float() + (scale * ratio) * delta).to(w.dtype))         # W + scale (alpha / r) up @ down
    pipe.loras.append((str(path), scale))
    return pipe


@torch.no_grad()
def unload_lora(pipe):
    """Put back every weight a LoRA touched, bit for bit, and forget the LoRAs."""
    table = layers(pipe)
    for key, original in pipe.lora_originals.items():
        table[key].weight.copy_(original)
    pipe.lora_originals.clear()
    pipe.loras.clear()
    return pipe


@torch.no_grad()
def extract_lora(base, tuned, rank, prefix="lora_unet_"):
    """A kohya LoRA (name -> tensor) that approximates tuned - base for every Linear / Conv2d weight of
    two modules of the same architecture (kohya's "extract LoRA from models"): the truncated SVD of each
    difference, reshaped to [out, in * kh * kw],  D ~= U_r S_r V_r^T,  up = U_r S_r,  down = V_r^T
    (down keeps the kernel: a 3x3 conv gives a LoCon pair), alpha = r. Unchanged weights are left out;
    norms and biases are not LoRA's and are dropped. prefix "lora_te_text_model_" names a text encoder."""
    tuned_modules, out = dict(tuned.named_modules()), {}
    for name, m in base.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)):
            continue
        w0, w1 = m.weight.float(), tuned_modules[name].weight.float()
        if torch.equal(w0, w1):
            continue
        u, s, vh = torch.linalg.svd((w1 - w0).reshape(w0.shape[0], -1), full_matrices=False)
        r = min(rank, len(s))
        key = (prefix + name).replace(".", "_")
        out[key + ".lora_up.weight"] = (u[:, :r] * s[:r]).reshape(w0.shape[0], r, *[1] * (w0.ndim - 2)).contiguous()
        out[key + ".lora_down.weight"] = vh[:r].reshape(r, *w0.shape[1:]).contiguous()
        out[key + ".alpha"] = torch.tensor(float(r))
    return out


def split_scale(spec, default=1.0):
    """"FILE[:SCALE]" -> (FILE, SCALE); a colon not followed by a number belongs to the file name."""
    head, sep, tail = spec.rpartition(":")
    try:
        return (head, float(tail)) if sep else (spec, default)
    except ValueError:
        return spec, default
