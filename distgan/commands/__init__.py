"""What users run: each command checks its input (exit 2 before Ray starts), runs, and returns a
typed result whose `to_json()` is its `--json-out` document."""
