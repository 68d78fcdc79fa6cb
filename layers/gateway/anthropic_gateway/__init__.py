"""Anthropic API gateway: virtual keys, limits, spend and tag metrics in front of api.anthropic.com."""
