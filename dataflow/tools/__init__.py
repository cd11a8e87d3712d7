"""The operator's command lines, shipped in the image: recovery, inspection, warm start, probe."""
