"""ddlight.tasks."""
