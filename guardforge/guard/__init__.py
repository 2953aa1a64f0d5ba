"""The guard: scores content per Llama Guard 4 hazard category and applies a policy."""
