"""`python -m sd.reflow` with plain SGD in place of AdamW (test helper).

Adam divides each step by the gradient's running RMS, so a gradient off by a constant factor (a wrong
loss scale in accumulation or in DDP's averaging) leaves its steps unchanged. With SGD and no
clipping the step is lr * gradient, and such a bug shows in the weights.
"""
import sys

import torch


def sgd(params, lr, weight_decay=0.0):
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


if __name__ == "__main__":
    torch.optim.AdamW = sgd
    from sd.reflow import main
    main(sys.argv[1:])
