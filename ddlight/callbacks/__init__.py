"""ddlight.callbacks."""
