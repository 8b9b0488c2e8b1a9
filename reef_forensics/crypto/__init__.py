"""Keys and the signed envelope (a DSSE bundle) that every format is sealed in; below the
formats, because every format is signed."""
