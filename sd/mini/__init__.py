"""The mini InstaFlow, `python -m sd.mini`: teacher, triplets, 2-RF, one-step student and a ControlNet on 16x16 shapes.
A command, at the top of sd/: it may import every group below (training, sampling, controlnet, checkpoints, models).
shapes.py (the world, its captions and judge) and models.py (tiny configurations) are its own ground floor."""
