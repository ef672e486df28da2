"""Git on the server: remote URL rules and the bare mirrors that imports read from."""
