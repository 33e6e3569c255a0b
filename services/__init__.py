"""BentoML services of mlstack: HTTP glue over mlstack.serving."""
