"""ddlight.distillers."""
