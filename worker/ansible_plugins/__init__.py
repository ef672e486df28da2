"""Ansible plugins that ansible-playbook loads for runs on targets (ANSIBLE_CALLBACK_PLUGINS names this directory)."""
