"""Interoperability with other libraries' checkpoints: Hugging Face model directories, both ways (hf.py)."""
