"""What a person reads about a run: the markdown summary and the static HTML report."""
