"""rectflow: Rectified Flow, reflow and distillation (Liu, Gong & Liu 2022) in plain PyTorch.

    flow     Eq. (1): X_t = t X_1 + (1 - t) X_0, target X_1 - X_0, the loss, time sampling; iCT's pseudo-Huber
    paths    the nonlinear extension X_t = alpha_t X_1 + beta_t X_0: linear, VP, cosine
    ode      Euler / Heun / RK4 solvers for dZ_t = v(Z_t, t) dt over any span, `invert` (data -> noise)
    couplings  independent, stored pairs, minibatch optimal transport
    reflow   rectification, reflow pairs (Algorithm 1)
    distill  one-step / k-step students (Algorithm 1, "Distill")
    metrics  straightness S(Z), exact W2 between sample sets, the share of samples at each mode
    solvers  training-free exponential integrators on this path: DDIM (= Euler), DPM-Solver++(2M), DEIS tAB2
    slimflow annealing reflow and flow-guided distillation: a student smaller than its teacher (SlimFlow)
    quantize fake quantisation of weights and activations, MixDQ's sensitivity and bit allocation
    consistency, meanflow, shortcut, progressive, distribution_matching
             the other few-step families (import them by module)
"""
from .couplings import independent_coupling, minibatch_ot_pairs, pairs_coupling
from .distill import distill_loss, train_student
from .flow import (append_dims, batch_time, call_velocity, data_end, interpolate, mse, pseudo_huber, rf_loss,
                   sample_time, velocity_target)
from .metrics import linear_sum_assignment, mode_shares, reconstruction_error, straightness, w2
from .ode import SOLVERS, euler, invert, solve
from .paths import PATHS, Path, get_path, path_loss
from .reflow import generate_pairs, load_pairs, save_pairs, train_flow
from .train import ema_update, fit, fit_coupling

__all__ = ["interpolate", "velocity_target", "sample_time", "rf_loss", "mse", "pseudo_huber", "data_end", "path_loss",
           "append_dims", "batch_time", "call_velocity", "ema_update", "solve", "euler", "invert",
           "SOLVERS", "independent_coupling", "pairs_coupling",
           "minibatch_ot_pairs", "PATHS", "Path", "get_path", "train_flow", "generate_pairs",
           "save_pairs", "load_pairs", "distill_loss", "train_student", "straightness", "reconstruction_error", "w2",
           "mode_shares", "linear_sum_assignment", "fit", "fit_coupling"]
