"""Developer commands that maintain the project's files (run from the repository root)."""
