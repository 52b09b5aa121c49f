"""ddlight.evaluation."""
