"""Interoperability with other libraries' checkpoints: Hugging Face model directories, both ways (hf.py the tensor-name
tables, hf_config.py config.json and weight files, hf_tokenizer.py tokenizer files)."""
