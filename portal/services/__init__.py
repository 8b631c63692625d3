"""Domain logic, once: routes, pages and actors are thin adapters over these modules."""
