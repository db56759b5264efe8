"""A mini ControlNet: the shapes' masks steer the mini models (sd/controlnet/, at 16 x 16 pixels).

    control image  the shape's mask, [3, S, S] in {0, 1} (the foreground of a clean render)
    training       as ControlNets are trained: the frozen teacher's epsilon objective through the
                   ControlNet's residuals, the caption dropped half the time (so that the mask alone
                   carries the layout), only the ControlNet learning
    use            the same ControlNet drives the 2-RF and the one-step student (InstaFlow runs SD 1.5's
                   ControlNets on its own models unchanged: the same transfer)
    measured       the IoU of the generated shape with the control mask, and the judge's colour accuracy
                   (the colour comes from the text), with and without the ControlNet
"""
import torch
from tqdm.auto import tqdm

from ..controlnet import ControlNet, controlled
from ..sampling.loop import cfg_context, sample
from ..training import objectives
from . import shapes


def masks(images):
    """The foreground of renders [n, 3, S, S] in [-1, 1] as control images [n, 3, S, S] in {0, 1}."""
    fg = ((images + 1) / 2).amax(1, keepdim=True) > 0.5                # the judge's foreground rule
    return fg.float().expand(-1, 3, -1, -1).contiguous()


def controlnet_for(unet):
    """The mini ControlNet: the UNet's encoder copied, a control embedding that keeps the size (pixel space)."""
    return ControlNet.from_unet(unet, conditioning_embedding_out_channels=[16])


def train_controlnet(teacher, text_encoder, tok, iters=1500, batch_size=64, lr=1e-4, drop_text=0.5, seed=0,
                     progress=True):
    """A ControlNet trained on the frozen teacher (epsilon objective, sd/training/objectives.py) to follow masks;
    returns (controlnet, losses)."""
    net = controlnet_for(teacher).train()
    teacher.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    gen, losses = torch.Generator().manual_seed(seed), []
    empty = text_encoder(tok([""]))
    for step in tqdm(range(iters), desc="mini ControlNet", disable=not progress):
        caps = [shapes.CAPTIONS[k] for k in torch.randint(len(shapes.CAPTIONS), (batch_size,), generator=gen).tolist()]
        x1 = shapes.render(caps, teacher.config["sample_size"], gen)
        with torch.no_grad():
            ctx = text_encoder(tok(caps))
            dropped = torch.rand(batch_size, generator=gen) < drop_text
            ctx[dropped] = empty.expand(int(dropped.sum()), -1, -1)
        model = controlled(teacher, [(net, masks(x1), 1.0)])
        rand = objectives.draw("eps", batch_size, x1.shape[1:], gen)
        loss = objectives.loss("eps", model, None, x1, ctx, rand)          # || eps - UNet_c(x_k, k, text) ||^2
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return net.eval(), losses


def iou(images, control):
    """IoU of each generated shape's foreground with its control mask: [n]."""
    a, b = masks(images)[:, 0] > 0, control[:, 0] > 0
    return (a & b).flatten(1).sum(1) / (a | b).flatten(1).sum(1).clamp(min=1)


@torch.no_grad()
def evaluate(nets, controlnet, text_encoder, tok, n=256, size=16, seed=123):
    """For each (name -> (unet, steps, sampler, guidance)): IoU with the control masks and colour accuracy,
    without and with the ControlNet. Masks come from renders of one caption, the prompt names another
    colour (same shape and place), so that the layout must come from the mask and the colour from the text."""
    gen = torch.Generator().manual_seed(seed)
    caps = [shapes.CAPTIONS[i % len(shapes.CAPTIONS)] for i in range(n)]
    control = masks(shapes.render(caps, size, gen))
    colours = list(shapes.COLOURS)
    prompts = []
    for i, c in enumerate(caps):                        # each of the other three colours in turn
        colour, shape, position = shapes.parse(c)
        prompts.append(shapes.caption(colours[(colours.index(colour) + 1 + i % 3) % 4], shape, position))
    x0 = torch.randn(control.shape, generator=gen)
    ids, empty, table, shown = tok(prompts), tok([""]), {}, {}
    for name, (unet, steps, sampler, guidance) in nets.items():
        ctx = cfg_context(text_encoder, ids, empty, guidance)       # [empty; prompts] under CFG
        for tag, model in (("without", unet), ("with", controlled(unet, [(controlnet, control, 1.0)]))):
            imgs = sample(model, ctx, x0.clone(), steps, guidance, sampler)
            judged = shapes.judge(imgs, prompts)
            table[f"{name}, {tag} ControlNet"] = {
                "iou": iou(imgs, control).mean().item(),
                "colour": sum(r["colour"] for r in judged) / n, "judge": sum(r["both"] for r in judged) / n}
            shown[f"{name}, {tag}"] = imgs
    return table, shown, control, prompts
