"""Request and response shapes of the API, apart from the tables so each can change alone."""
