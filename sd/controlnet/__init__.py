"""ControlNet (model.py), its loaders (load.py), the UNet driven by ControlNets during sampling
(control.py) and a Canny edge detector in plain torch for canny control images (canny.py).
May import sd.models (the UNet's Encoder it extends) and sd.checkpoints; never sampling or training."""
from .canny import canny
from .control import controlled, control_tensor
from .load import load_controlnet
from .model import ControlNet

__all__ = ["ControlNet", "load_controlnet", "canny", "controlled", "control_tensor"]
