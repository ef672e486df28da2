"""The original system's Nginx deployment as its repositories hold it: the survey's first question, and the problem
the scan names when it chooses among playbooks of other names than the defaults."""

from __future__ import annotations

SERVER_NAME_QUESTION = """\
  - type: text
    variable: server_name
    question_name: 服务器域名
    required: true
    default: "example.com"
    min_length: 3
    max_length: 255
"""
"""The survey item asking for the server's name, with its length limits."""

CHOSE_DEPLOY_NGINX = (
    "test/playbooks/deploy_nginx.yml",
    "no playbook.yml/main.yml/site.yml/deploy.yml; chose deploy_nginx.yml, the first *.yml/*.yaml by name "
    "that holds plays (others: test_realtime.yml)",
)
"""The file and message of the problem a `test/playbooks` with `test_realtime.yml` and `deploy_nginx.yml` carries."""
