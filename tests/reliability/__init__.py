"""Issue 7: reliability and security — faults survived, bad input refused, nothing lost, nothing leaked."""
