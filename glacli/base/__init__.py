"""What every layer shares: the records that cross layers, errors, input validation, chunking and
devices."""
