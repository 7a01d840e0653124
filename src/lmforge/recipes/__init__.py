"""Recipes wire a config to data, a model and the training loop: pretrain, finetune, quickstart."""
