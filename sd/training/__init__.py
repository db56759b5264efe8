"""InstaFlow's training: (text, noise, image) triplets in shards, the objectives (eps, reflow, distill, and LCM's consistency), the trainer.
May import sd.sampling (the teacher's sampler makes triplets), sd.checkpoints, sd.models and rectflow; never the commands.
The commands on top (sd.reflow, sd.mini) drive it."""
