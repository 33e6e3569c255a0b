"""mlstack core."""
