"""Text generation: token-level decoding with a KV cache and the sampling controls, and text in, text out."""
