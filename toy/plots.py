"""Figures of a toy run: samples per stage and step count, trajectories, straightness. Each takes
`note`, a line shown above the figure (a fast run says that its figures mean nothing)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _limits(ax, target):
    lo, hi = target.min(0), target.max(0)
    pad = 0.25 * (hi - lo)
    ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
    ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


SAMPLE_COLOURS = [f"C{i}" for i in range(10) if i != 7]      # C7 is the grey of the target


def plot_samples(res, path=None, note=None, stages=None, steps=None,
                 title="samples of each model after N Euler steps (colour) over samples of the target (grey)"):
    """Rows: stages; columns: Euler steps (or each method's own N-step rule). Grey: target samples;
    colour: the model's samples. `stages` / `steps` pick a subset."""
    stages = list(res.metrics["stages"]) if stages is None else stages
    steps = list(res.config.steps) if steps is None else steps
    target = res.samples["target"]
    fig, axes = plt.subplots(len(stages), len(steps), figsize=(2.6 * len(steps), 2.6 * len(stages) + 0.5),
                             squeeze=False)
    for r, stage in enumerate(stages):
        for c, n in enumerate(steps):
            ax = axes[r, c]
            key = f"{stage}_{n}"
            if key not in res.samples:
                ax.axis("off")
                continue
            ax.scatter(target[:, 0], target[:, 1], s=2, c="0.8", rasterized=True)
            x = res.samples[key]
            ax.scatter(x[:, 0], x[:, 1], s=2, c=SAMPLE_COLOURS[r % len(SAMPLE_COLOURS)], rasterized=True)
            ax.set_title(f"{stage}, {n} step{'s' * (n > 1)}\nW2 = {res.metrics['stages'][stage]['w2'][str(n)]:.2f}",
                         fontsize=9)
            _limits(ax, target)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path, note, title_inches=0.35)


def plot_trajectories(res, path=None, cols=4, note=None):
    """The Euler paths of 300 points for each flow: 1-RF bends them, reflow straightens them."""
    stages = list(res.trajectories)
    rows = -(-len(stages) // cols)
    ncol = min(cols, len(stages))
    fig, axes = plt.subplots(rows, ncol, figsize=(3.6 * ncol, 3.6 * rows + 0.5), squeeze=False)
    for ax in axes.flat[len(stages):]:
        ax.axis("off")
    for ax, stage in zip(axes.flat, stages):
        traj = res.trajectories[stage]                        # [steps + 1, m, 2]
        ax.plot(traj[:, :, 0], traj[:, :, 1], c="C7", lw=0.4, alpha=0.5)
        ax.scatter(traj[0, :, 0], traj[0, :, 1], s=3, c="C0", label="start: noise $Z_0 \\sim \\pi_0$", zorder=3)
        ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=3, c="C3", label="end: sample $Z_1$", zorder=3)
        ax.set_title(f"{stage}: S = {res.metrics['stages'][stage]['straightness']:.3g}", fontsize=10)
        _limits(ax, traj.reshape(-1, 2))
    axes[0, 0].legend(loc="lower left", fontsize=7, markerscale=3)
    fig.suptitle("Euler paths of 300 points (grey), S = straightness (lower is straighter)", fontsize=10)
    return _save(fig, path, note)


def plot_straightness(res, path=None, title="reflow straightens the flow", note=None):
    stages = list(res.trajectories)
    vals = [res.metrics["stages"][s]["straightness"] for s in stages]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(stages), 3))
    ax.bar(stages, vals, color=[f"C{i}" for i in range(len(stages))])
    ax.set_yscale("log")
    ax.set_ylabel("straightness S(Z), log scale\n(lower is straighter; 0: straight)", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    return _save(fig, path, note)


def plot_w2_vs_steps(res, path=None, note=None):
    """W2 against the number of Euler steps, one curve per flow, one marker per one-step student."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    floor = res.metrics["w2_floor"]
    for i, (name, m) in enumerate(res.metrics["stages"].items()):
        steps = sorted(int(n) for n in m["w2"])
        vals = [m["w2"][str(n)] for n in steps]
        style = dict(marker="o", ms=4) if len(steps) > 1 else dict(marker="*", ms=11, ls="none")
        if i >= 10 and len(steps) > 1:                  # past ten colours (the few-step rows): dashed
            style.update(ls="--", marker="s")
        ax.plot(steps, vals, label=name, color=f"C{i % 10}", **style)
    ax.axhline(floor, color="0.5", ls=":", lw=1, label=f"floor ({floor:.2f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("steps N (Euler; the few-step methods: their own N-step rule)")
    ax.set_ylabel("W2 to the target (log)")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"W2 from N-step samples to the target (dataset {res.metrics['dataset']!r}; lower is better)",
                 fontsize=10)
    return _save(fig, path, note)


def plot_inversion(res, path=None, note=None):
    """Invert-then-generate error against the number of Euler steps each way, one curve per model."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, (name, errs) in enumerate(res.metrics["inversion"].items()):
        steps = sorted(int(n) for n in errs)
        ax.plot(steps, [errs[str(n)] for n in steps], "o-", color=f"C{i}", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Euler steps N (backwards, then forwards)")
    ax.set_ylabel("E||x_1' - x_1||^2 (log)")
    ax.set_title("inversion: the straighter the flow, the fewer steps", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path, note)


def _save(fig, path, note=None, title_inches=0.0):
    """Lay out (leaving `title_inches` at the top for a suptitle), add the note, save and close."""
    fig.tight_layout(rect=(0, 0, 1, 1 - title_inches / fig.get_size_inches()[1]))
    if note:                                  # in the bottom margin, after the layout: nothing moves
        w, h = fig.get_size_inches()
        fig.set_size_inches(w, h + 0.3)
        fig.subplots_adjust(bottom=(fig.subplotpars.bottom * h + 0.3) / (h + 0.3),
                            top=fig.subplotpars.top * h / (h + 0.3))
        fig.text(0.01, 0.01, note, color="red", fontsize=9, va="bottom")
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
