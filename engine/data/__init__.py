"""Dataset layout, labels, folds, audio decoding and the demo dataset."""
