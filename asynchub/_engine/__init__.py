"""The transfer engine: one engine per hub turns file jobs into verified files in the cache.

Ranged and whole-file downloads, chunk plan and resume state, scheduler, hash cursor, rate
limit, retry policy. Speaks to the network only through the Transport protocol."""
