"""Fine-tuning tasks: one module per task (read, encode, head, score, record) and the registry of them."""
