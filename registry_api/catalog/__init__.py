"""GB/T 28181 catalogs: MANSCDP in (a department's platform), the shared catalog out (an upper
platform), the catalog tree, unplaced feeds and resolved duplicates."""
