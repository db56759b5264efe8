"""One tuning budget for every method of `python -m toy compare`: `python -m toy compare --tune METHOD`.

A comparison is fair only if every method gets the same tuning effort. Each method but 1-rf (the paper's
recipe, and the flow most others start from) gets the same search: the four learning rates of LRS times
two values of its main knob (its paper's value, or our default, first), 8 configurations. Each is
trained at seed 0, the flows it starts from (its ancestors) with their own chosen settings (TUNED), and
scored on the *validation* sets (Bench's split="validation": starting noises, targets and the consistency
samplers' re-noising draws all seeded apart from the evaluation's; tests check seeds 0-3), so that the
evaluation noises never choose. The score is the mean W2 over the step counts 1, 2, 4, 8 the
method samples with (a one-step student or generator: its one step). The choices made are written in
toy/compare.py's TUNED, the searches' tables in docs/toy.md; `python -m toy compare` uses them.
"""
import itertools
from dataclasses import replace

from .compare import TUNED, CompareConfig, run_compare

LRS = (3e-4, 1e-3, 3e-3, 1e-2)
TIME = ("time_sampler", ("uniform", "logit_normal"))    # Eq. (1)'s t: uniform, or logit-normal (Esser et al. 2024)
STUDENT = ("loss", ("mse", "pseudo_huber"))             # the student's distance: squared, or iCT's pseudo-Huber
KNOBS = {
    "1-rf-2x": TIME, "vp": TIME, "cosine": TIME, "2-rf": TIME, "ot-2-rf": TIME,
    "ot": ("ot_block", (256, 1024)),                    # rows per exact assignment
    "1-rf-distilled": STUDENT, "ot-distilled": STUDENT, "2-rf-distilled": STUDENT,
    "cd": ("ema", (0.95, 0.0)),                         # the target network: an EMA, or iCT's online weights
    "ct": ("ict", (True, False)),                       # iCT's recipe, or the consistency paper's
    "meanflow": ("equal_fraction", (0.75, 0.5)),        # share of (r, t) with r = t (Geng et al.: 75%)
    "shortcut": ("consistency_fraction", (0.25, 0.5)),  # share of the batch on self-consistency (Frans et al.: 1/4)
    "progressive": ("start_steps", (16, 8)),            # the teacher's steps of the first round
    "dmd2": ("fake_updates", (5, 1)),                   # fake-velocity steps per generator step (DMD2: 5)
    "sid": ("alpha", (1.2, 1.0)),                       # SiD's alpha (Zhou et al.: 1.2)
}
SCORED_STEPS = (1, 2, 4, 8)


def configurations(method):
    """The 8 settings a search tries: each learning rate with each value of the method's knob."""
    if method not in KNOBS:
        raise ValueError(f"{method!r} is not searched: choose one of {', '.join(KNOBS)} "
                         "(1-rf keeps the paper's recipe)")
    knob, values = KNOBS[method]
    return [{"lr": lr, knob: v} for lr, v in itertools.product(LRS, values)]


def validation_score(w2):
    """Mean W2 over the scored step counts a method has (a one-step model: its one step)."""
    scored = [w2[str(n)] for n in SCORED_STEPS if str(n) in w2]
    return sum(scored) / len(scored)


def tune(method, base=None, run=run_compare):
    """Run the search for `method` at seed 0 on the validation sets. Returns (rows, best): rows a list of
    (settings, validation score, W2 per step count), best the settings of the lowest score."""
    base = base or CompareConfig()
    rows, ancestors = [], {}           # the flows `method` starts from: the same in all 8 runs, trained once
    for settings in configurations(method):
        cfg = replace(base, seed=0, methods=(method,), steps=SCORED_STEPS, settings={**TUNED, method: settings})
        w2 = run(cfg, split="validation", ancestors=ancestors).metrics["stages"][method]["w2"]
        rows.append((settings, validation_score(w2), w2))
    return rows, min(rows, key=lambda r: r[1])[0]
