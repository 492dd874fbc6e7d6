"""Small shared helpers (atomic file and folder writes, JSON lines)."""
