"""Session backends; each imports its library only when a session is opened."""
