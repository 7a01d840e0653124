"""Kernels applied to a model from outside, so that lmforge.nn stays plain PyTorch: CPU kernel choice for linear
layers and the int8 greedy-argmax screen of an LM head."""
