"""Sparse teachers: a teacher known by its top-k log-probs (or the student's top-k support)."""
