"""Command-line tools: the demo, recovery store tools, inspection, warm start, the probe."""
