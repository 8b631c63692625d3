"""People and their ways in: accounts and roles, passwords and lockout, sessions and refresh tokens, wallet
and OAuth sign-in, API keys, and the email the portal sends them."""
