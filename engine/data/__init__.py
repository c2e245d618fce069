"""Dataset layout, labels, folds, registration, audio decoding and caches, training clips, the demo dataset."""
