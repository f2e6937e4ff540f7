"""Worker processes: a relay on every core, with one quota host and one stream log."""
