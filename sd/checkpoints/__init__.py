"""Files in and out: the safetensors reader/writer, diffusers folders and single-file checkpoints, hub-cache ids, images.
May import sd.models (to build what it loads); nothing above it (no edits, sampling or training).
Every bad file raises one error that names the file and the key (SafetensorsError, CheckpointError, ImageError)."""
