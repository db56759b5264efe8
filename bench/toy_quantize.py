"""Low-bit weights and activations on the toy: W2 of the 2-RF (1, 2, 4 Euler steps) and of the one-step student at
float32, W8, W4 (weights only), W8A8, W4A8, W4A4, and a MixDQ-style allocation of 4 and 8 bits within 6 bits on
average (A8; the table names the average reached).

    python bench/toy_quantize.py [--seed 0]                         about 2 minutes on 2 CPU cores

Trains what `python -m toy` trains (same seed and budget). Calibration (the activation ranges and MixDQ's per-layer
SQNR) runs each model on 32 noises of the validation split, N Euler steps at the largest N scored (its own samples at
every time it is used at); W2 is measured on the evaluation sets, which calibration never sees (rectflow/quantize.py).
The first layer's input, the raw (x, t), stays in float: at 4 bits its one per-tensor scale (|x| up to about 10)
would round t in [0, 1] to 0 or 1.4. Prints markdown.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import rectflow as rf  # noqa: E402
from rectflow.quantize import allocate_bits, average_bits, layer_sensitivity, quantize  # noqa: E402
from toy.experiment import Bench, Config, run  # noqa: E402

CALIBRATION_NOISES = 32
MODELS = {"2-rf": (1, 2, 4), "2-rf-distilled": (1,)}       # model -> its Euler step counts scored
SETTINGS = {"float32": (None, None), "W8": (8, None), "W4": (4, None), "W8A8": (8, 8), "W4A8": (4, 8),
            "W4A4": (4, 4), "MixDQ-style W4/W8 A8": ("mixed", 8)}
RAW_INPUT = ("net.0",)                                         # the MLP's first layer: its input is (x, t)
MIXED = (4, 8, 6.0)                                            # low, high, average-bit budget


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    cfg = Config(seed=args.seed, progress=not args.no_progress)
    res = run(cfg)
    ev, cal = Bench(cfg), Bench(cfg, "validation")
    z, zc, n = ev.z_eval.to(ev.dev), cal.z_eval[:CALIBRATION_NOISES].to(ev.dev), cfg.n_eval
    rows = {}
    for name, steps in MODELS.items():
        model = res.models[name]

        def calibrate(m, steps=steps):
            return rf.euler(m, zc, max(steps))
        sens = layer_sensitivity(model, MIXED[0], calibrate)
        mixed = allocate_bits(model, sens, *MIXED)
        for setting, (wbits, abits) in SETTINGS.items():
            bits = mixed if wbits == "mixed" else wbits
            q = model if wbits is None else quantize(model, bits, calibrate, abits, keep_inputs=RAW_INPUT)
            rows[name, setting] = {k: rf.w2(rf.euler(q, z, k)[:n].cpu(), ev.target[:n]) for k in steps}
        print(f"{name}: per-layer SQNR at {MIXED[0]} bits (dB): " + ", ".join(f"{k} {v:.1f}" for k, v in sens.items())
              + f"; the MixDQ-style bits: {mixed}, {average_bits(model, mixed):.2f} on average", flush=True)
    print("\n| setting | " + " | ".join(f"{m} W2 @ {k}" for m, steps in MODELS.items() for k in steps) + " |")
    print("| --- |" + " ---: |" * sum(len(s) for s in MODELS.values()))
    for setting in SETTINGS:
        print(f"| {setting} | " + " | ".join(f"{rows[m, setting][k]:.3f}" for m, steps in MODELS.items()
                                            for k in steps) + " |")
    print(f"(W2 between two target sets, the floor: {res.metrics['w2_floor']:.3f}; seed {args.seed})")


if __name__ == "__main__":
    main()
