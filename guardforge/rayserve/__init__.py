"""guardforge on Ray Serve: the same app across nodes (`guardforge serve --ray`; imports ray, so never on the default path)."""
