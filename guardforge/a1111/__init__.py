"""AUTOMATIC1111 compatibility: its API shapes (schemas) and their translation to and from Studio calls (adapter)."""
