"""The floor of the library: atomic writes, the cache folder and what the tool may write where
(outputs it wrote are marked; nothing else is replaced or deleted)."""
