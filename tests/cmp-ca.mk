# (filled in by its change)
