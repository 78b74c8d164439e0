"""Progress events (the library's) and terminal/notebook bars built on them."""
