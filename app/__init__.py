"""The API server and its control loop: owns Postgres and the Git mirrors."""
