"""Video backbones that carry state through time: :mod:`.videomamba`."""
