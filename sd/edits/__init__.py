"""Weights changed in place: LoRA files merged (and unloaded), InstaFlow's fine-tune deltas W + alpha (W_ft - W_base).
May import sd.checkpoints and sd.models; never sampling or training (the pipeline calls these, not the reverse).
Everything is checked before the first weight changes, so a bad file leaves the model as it was."""
