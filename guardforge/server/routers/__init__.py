"""Routers: each translates HTTP to one Studio call and back."""
