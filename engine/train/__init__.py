"""Losses, optimiser schedules, the per-fold training loop, the data side of a spec as objects, torch setup."""
