"""Built-in reporter and tracker plugins."""
