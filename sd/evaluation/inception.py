"""FID's Inception-v3: the TensorFlow graph of 2015-12-05 that FID is defined on (Heusel et al. 2017),
as ported to PyTorch with torchvision's layer names (`Conv2d_1a_3x3.conv/.bn`, `Mixed_5b` ... `Mixed_7c`,
`fc` with 1008 outputs), so that pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` and
torch-fidelity's `weights-inception-2015-12-05-6726825d.pth` load as they are.

It differs from torchvision's ImageNet Inception-v3 where the TensorFlow graph does: the average pools
inside the blocks do not count the zero padding (count_include_pad=False), and the last block
(Mixed_7c) pools its fourth branch with a max pool instead of an average.

    features(images) = the 2048 channels of the global average pool after Mixed_7c

Input convention (pytorch-fid's): float images [N, 3, H, W] in [0, 1], resized bilinearly to 299 x 299
(align_corners=False; nothing happens at 299 x 299), then mapped to [-1, 1] by 2x - 1. Other tools
resize differently, so their FIDs on images that are not 299 x 299 differ slightly from each other:
torch-fidelity resizes with TensorFlow 1.x's bilinear rule (no half-pixel centres) and takes uint8
scaled as (x - 128) / 128; clean-fid resizes uint8 images with PIL's bicubic filter (antialiased)
before the network. At 299 x 299 the three agree but for the uint8 scaling (x/127.5 - 1 here).
"""
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rectflow.checks import listing


class ConvBN(nn.Module):
    """conv (no bias) -> BatchNorm (eps 0.001, TensorFlow's) -> ReLU; `conv` / `bn` as torchvision names them."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def avg3(x):
    """3x3 average pool, stride 1, that does not count the padding (the TensorFlow graph's)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):
    """Mixed_5b/c/d: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | pool -> 1x1."""

    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = ConvBN(cin, 48, 1), ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(avg3(x))], 1)


class BlockB(nn.Module):
    """Mixed_6a, a reduction: 3x3 stride 2 | 1x1 -> 3x3 -> 3x3 stride 2 | max pool stride 2."""

    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class BlockC(nn.Module):
    """Mixed_6b-e: 1x1 | 1x1 -> 1x7 -> 7x1 | 1x1 -> (7x1 -> 1x7) x 2 | pool -> 1x1, with c7 inner channels."""

    def __init__(self, cin, c7):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = ConvBN(cin, c7, 1), ConvBN(c7, c7, **row), ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2, self.branch7x7dbl_3 = ConvBN(c7, c7, **col), ConvBN(c7, c7, **row)
        self.branch7x7dbl_4, self.branch7x7dbl_5 = ConvBN(c7, c7, **col), ConvBN(c7, 192, **row)
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        dbl = x
        for k in range(1, 6):
            dbl = getattr(self, f"branch7x7dbl_{k}")(dbl)
        return torch.cat([self.branch1x1(x), self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))), dbl,
                          self.branch_pool(avg3(x))], 1)


class BlockD(nn.Module):
    """Mixed_7a, a reduction: 1x1 -> 3x3 stride 2 | 1x1 -> 1x7 -> 7x1 -> 3x3 stride 2 | max pool stride 2."""

    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = ConvBN(cin, 192, 1), ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        b = x
        for k in range(1, 5):
            b = getattr(self, f"branch7x7x3_{k}")(b)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):
    """Mixed_7b/c: 1x1 | 1x1 -> (1x3, 3x1) | 1x1 -> 3x3 -> (1x3, 3x1) | pool -> 1x1. `max_pool`: the
    last block of the TensorFlow graph pools its fourth branch with a 3x3 max pool, not an average."""

    def __init__(self, cin, max_pool=False):
        super().__init__()
        row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
        self.max_pool = max_pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1, self.branch3x3_2a, self.branch3x3_2b = ConvBN(cin, 384, 1), ConvBN(384, 384, **row), ConvBN(384, 384, **col)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = ConvBN(cin, 448, 1), ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a, self.branch3x3dbl_3b = ConvBN(384, 384, **row), ConvBN(384, 384, **col)
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else avg3(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
    """images [N, 3, H, W] in [0, 1] -> pool features [N, 2048] (the module docstring says how)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32), BlockA(256, 64), BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e = (BlockC(768, c) for c in (128, 160, 160, 192))
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b, self.Mixed_7c = BlockE(1280), BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)          # the graph's 1008 classes: loaded, not used for FID's features

    def forward(self, images):
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))                    # global average pool: [N, 2048]


class InceptionError(ValueError):
    """An Inception weight file that does not fit (the message names the file and the keys)."""


def load_inception(path, device="cpu"):
    """FID's Inception-v3 from pytorch-fid's / torch-fidelity's .pth state dict (read with
    weights_only=True: never unpickled); BatchNorm's num_batches_tracked may be there or not."""
    path = Path(path)
    if not path.is_file():
        raise InceptionError(f"{path}: no such Inception weight file: FID's is pytorch-fid's "
                             f"pt_inception-2015-12-05-6726825d.pth (from its GitHub releases; python -m sd.tiny writes "
                             f"a random stand-in)")
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head[8:9] == b"{":                                    # 8 bytes of header length, then the JSON header
        raise InceptionError(f"{path}: a safetensors file; FID's Inception is pytorch-fid's .pth state dict "
                             f"(pt_inception-2015-12-05-6726825d.pth, from its GitHub releases)")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:                                        # not a torch file, or one that needs pickle
        raise InceptionError(f"{path}: not a PyTorch state dict file: expected pytorch-fid's "
                             f"pt_inception-2015-12-05-6726825d.pth (from its GitHub releases)") from None
    if not isinstance(sd, dict):
        raise InceptionError(f"{path}: holds a {type(sd).__name__}, not a state dict")
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    model = FIDInception()
    want = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(set(want) - set(sd)), sorted(set(sd) - set(want))
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {tuple(want[k])})" for k in want if k in sd and sd[k].shape != want[k]]
    if missing or unexpected or wrong:
        parts = [f"missing {listing(missing, 3)}" if missing else "",
                 f"unexpected {listing(unexpected, 3)}" if unexpected else "",
                 f"mis-shaped {listing(wrong, 3)}" if wrong else ""]
        raise InceptionError(f"{path}: not FID's Inception-v3 weights: " + "; ".join(p for p in parts if p))
    model.load_state_dict(sd, strict=False)
    return model.to(device).eval()
