"""The PDF report: rendering, charts, signing and timestamps, and its verification by
re-rendering."""
