"""Reaching the hosts an operator manages over SSH: what the server and the thin worker share.

The server pins each host's keys when the host joins the inventory; the worker connects with exactly those keys
and refuses a host that shows another. Nothing here knows of the API, the database or the job queue: addresses,
ports, keys and limits come in as arguments.
"""
