"""Stage 6, the review: judges a finished video (its script and its clips) and draws its storyboard page."""
