"""Audio decoding, resampling and encoding."""
