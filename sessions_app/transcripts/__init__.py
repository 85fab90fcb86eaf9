"""Claude Code transcripts: locate (inside the roots only), tail (by seeking), parse."""
