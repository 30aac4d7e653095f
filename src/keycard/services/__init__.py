"""Pure service logic behind keycard's Google-compatible APIs."""
