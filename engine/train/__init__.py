"""Losses, optimiser schedules and the per-fold training loop."""
