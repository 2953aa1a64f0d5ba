"""Jobs: the persistent queue, progress events, and the workers that run generations."""
