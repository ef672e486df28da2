"""The inventory's rules: what a host's fields may hold, and reading an Ansible inventory into hosts."""
