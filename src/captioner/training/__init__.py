"""`captioner train`: settings, the Trainer and its objectives, schedules, resume, torchrun, the run folder."""
