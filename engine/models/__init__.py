"""Model architectures: PANNs CNN14/ResNet38, heads, the compact CPU model."""
