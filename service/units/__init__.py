"""Spirit LM unit dictionaries and token strings."""
