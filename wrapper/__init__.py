"""The opsconsole run wrapper and the on-disk protocol it owns (stdlib only)."""
