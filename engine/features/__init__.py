"""Log-mel frontend and augmentations (torch)."""
