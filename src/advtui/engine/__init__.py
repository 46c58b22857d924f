"""Everything that touches torch: data, models, maximizers, objectives, defenses, training."""
