"""Sampling: the pipeline (load_pipeline, text/image to image, inversion), the one sampling loop, teacher samplers, the fused Euler step.
May import sd.models, sd.checkpoints, sd.edits and sd.controlnet; never sd.training or the commands.
Order inside: euler.py and samplers.py at the bottom, loop.py on them, pipeline.py on top."""
