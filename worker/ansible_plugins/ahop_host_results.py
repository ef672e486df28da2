"""Ansible callback plugin: each host's results of a playbook run, as JSON lines for the worker to read.

Loaded by ansible-playbook, not by the worker: the worker points ANSIBLE_CALLBACK_PLUGINS at this directory, enables
`ahop_host_results` in ANSIBLE_CALLBACKS_ENABLED and names the file in AHOP_HOST_RESULTS_FILE
(`worker.ansible_targets`). A notification plugin: it changes nothing of what ansible-playbook prints.

Lines, each a JSON object, flushed as they are written, so a run stopped half-way leaves what it saw:
- `{"event": "failed" | "unreachable", "host": NAME, "message": TEXT}` when a task fails on a host (not one whose
  errors are ignored) or cannot reach it (also when Ansible calls a refused host key a failed task);
- `{"event": "summary", "host": NAME, "ok": N, "changed": N, "failures": N, "unreachable": N, "skipped": N,
  "rescued": N, "ignored": N}` per host the playbook processed, once it has ended.
"""

from __future__ import annotations

import json
from typing import Any

from ansible.plugins.callback import CallbackBase  # type: ignore[import-untyped]

DOCUMENTATION = """
    name: ahop_host_results
    type: notification
    short_description: Writes each host's results as JSON lines to a file
    description:
      - Per host, the first failure or unreachable message, then the counts of the play recap.
    options:
      results_file:
        description: The file the JSON lines are appended to.
        required: true
        env:
          - name: AHOP_HOST_RESULTS_FILE
"""

HOST_KEY_REFUSED_FOR_A_LOGIN = "Using a SSH password instead of a key is not possible because Host Key checking"
"""How Ansible's ssh plugin fails a task when a host with a password login shows a key not pinned: the host was not
reached, as a key login's "Host key verification failed" is reported unreachable."""
MESSAGE_CHARS = 2000
"""Most characters of one failure message kept: enough for Ansible's longest errors, bounded for a module's output."""


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "ahop_host_results"
    CALLBACK_NEEDS_ENABLED = True

    def set_options(self, task_keys: Any = None, var_options: Any = None, direct: Any = None) -> None:
        super().set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        self._results_file: str = self.get_option("results_file")

    def _write(self, line: dict[str, Any]) -> None:
        with open(self._results_file, "a", encoding="utf-8") as results:
            results.write(json.dumps(line) + "\n")

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        if not ignore_errors:
            message = _message(result)
            kind = "unreachable" if HOST_KEY_REFUSED_FOR_A_LOGIN in message else "failed"
            self._write({"event": kind, "host": result._host.get_name(), "message": message})

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._write({"event": "unreachable", "host": result._host.get_name(), "message": _message(result)})

    def v2_playbook_on_stats(self, stats: Any) -> None:
        for host in sorted(stats.processed):
            counts = stats.summarize(host)
            self._write({"event": "summary", "host": host, **{key: int(value) for key, value in counts.items()}})


def _message(result: Any) -> str:
    """What went wrong, as the play's output says it: the task's name and the module's message (or its stderr)."""
    outcome = result._result
    text = outcome.get("msg") or outcome.get("stderr") or outcome.get("module_stderr") or "failed"
    if not isinstance(text, str):
        text = json.dumps(text, default=str)
    return f"task {result._task.get_name()!r}: {text.strip()[:MESSAGE_CHARS]}"
