"""Repository environments: the `.backspace.toml` file, set-up layers and their cache, and the
verification receipt."""
