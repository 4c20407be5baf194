"""Cross-cutting infrastructure: settings, errors, image decoding, metrics, the toy world."""
