"""pingan HTTP API: receives events from workers, serves the security room, traffic police and admins."""
