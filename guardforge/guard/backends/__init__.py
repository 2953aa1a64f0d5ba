"""Guard backends: each scores texts or images per S-code behind one batchable interface."""
