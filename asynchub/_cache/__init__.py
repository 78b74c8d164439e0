"""The on-disk cache: every path rule of the layout, locks and atomic commit, safe archive
extraction and cache administration (ls, verify, prune, mirror)."""
