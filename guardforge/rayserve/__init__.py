"""guardforge on Ray Serve (`guardforge serve --ray`); imports ray, so nothing on the default path imports it."""
