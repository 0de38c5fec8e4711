"""Real data that installs offline: scikit-image sample photos, scikit-learn digits."""
