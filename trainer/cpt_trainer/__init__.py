"""cpt-trainer: the trainer container code (train, curate, eval, metrics)."""
