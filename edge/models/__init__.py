"""Models are data: a manifest describes each file, the registry resolves and verifies it."""
