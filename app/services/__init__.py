"""Use cases of the server. No Litestar here: services raise domain errors, the API maps them."""
