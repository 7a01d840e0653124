"""Inference verbs on loaded models: predict, evaluate (reports), embed, fill-mask."""
