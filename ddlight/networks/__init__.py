"""ddlight.networks."""
