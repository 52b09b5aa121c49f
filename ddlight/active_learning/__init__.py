"""ddlight.active_learning."""
