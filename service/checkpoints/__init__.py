"""Official Spirit LM checkpoint layout and the embedded tiny default checkpoints."""
