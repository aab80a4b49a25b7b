"""File formats fitsync writes and reads: manifests (JSONL, b3sum, sha256sum) and BagIt tag files."""
