"""The server's control loop (DESIGN §5): it records what workers report, sends what waits, and finds lost tasks.

- `events`     the event consumer: worker events from the events stream, recorded once
- `outcomes`   how an attempt ended: output moved to Postgres, a final status or the next attempt (retry policy)
- `reconciler` pending tasks and queued tasks whose job vanished are enqueued (again)
- `reaper`     running tasks whose worker stopped heartbeating become `lost`
- `loop`       runs them side by side in a server process, and stops them
"""
