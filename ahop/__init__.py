"""The `ahop` command: the composition root that builds settings and hands them to `app`, `worker` or `storage`."""
