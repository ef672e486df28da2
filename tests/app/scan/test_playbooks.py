"""What counts as a playbook, which YAML files are worth reading, and the entry an Ansible directory runs."""

from __future__ import annotations

from app.scan.playbooks import (
    PLAYBOOK_BYTES,
    Reader,
    choose_entry,
    holds_plays,
    is_playbook_content,
    may_be_playbook,
)


def test_a_list_of_plays_is_a_playbook_and_other_yaml_is_not() -> None:
    assert holds_plays(b"---\n- hosts: web\n  tasks: []\n")
    assert holds_plays(b"# deploy\n- name: Deploy\n  vars:\n    a: {b: [1, 2]}\n  become: true\n  hosts: all\n")
    assert holds_plays(b"- import_playbook: web.yml\n- import_playbook: db.yml\n")
    assert holds_plays(b"- ansible.builtin.import_playbook: other.yml\n")
    # a role's task list, vars, Galaxy requirements, compose and CI files, and broken or empty YAML
    assert not holds_plays(b"- name: install\n  package: name=nginx\n- name: hosts\n  debug: msg=hosts\n")
    assert not holds_plays(b"- name: hosts\n  debug: {hosts: all}\n")  # a value or a nested key is no play key
    assert not holds_plays(b"hosts: all\nhttp_port: 80\n")
    assert not holds_plays(b"- src: geerlingguy.nginx\n  version: 3.1.0\n")
    assert not holds_plays(b"services:\n  web:\n    image: nginx\n")
    assert not holds_plays(b"- hosts\n- all\n")
    assert not holds_plays(b"[]\n")
    assert not holds_plays(b"- [unclosed\n")
    assert not holds_plays(b"")
    assert not holds_plays(b"\xff\xfe")


def test_a_prefix_cut_mid_file_still_decides() -> None:
    play = b"- name: big\n  hosts: all\n  tasks:\n" + b"    - debug: msg=x\n" * 10_000
    assert len(play) > PLAYBOOK_BYTES
    assert holds_plays(play[:PLAYBOOK_BYTES])
    tasks = b"- name: only tasks\n  debug:\n    msg: [\n" + b"      x,\n" * 10_000
    assert not holds_plays(tasks[:PLAYBOOK_BYTES])


def test_which_yaml_files_are_worth_reading() -> None:
    worth = ["site.yml", "playbooks/deploy_nginx.yml", "ops/web/upgrade.yaml"]
    never = [
        "roles/nginx/tasks/main.yml",
        "playbooks/roles/db/handlers/main.yml",
        "group_vars/all.yml",
        "inventories/prod/hosts.yml",
        "web/vars/main.yml",
        "web/defaults/main.yml",
        "web/meta/main.yml",
        "molecule/default/converge.yml",
        ".github/workflows/ci.yml",
        ".gitlab-ci.yml",
        "web/survey.yml",
        "notes.txt",
        "web/.yml",
    ]
    assert [path for path in worth + never if may_be_playbook(path)] == worth


def reader(files: dict[str, bytes], reads: list[str]) -> Reader:
    """Reads of `files`, recorded in `reads`."""

    def read(path: str, limit: int) -> bytes:
        reads.append(path)
        return files[path][:limit]

    return read


def test_a_default_name_is_the_entry_without_a_note_or_a_read() -> None:
    reads: list[str] = []
    names = ["survey.yml", "aaa.yml", "site.yml", "main.yml"]
    assert choose_entry("p", names, reader({}, reads)) == ("main.yml", ())
    assert reads == []


def test_the_fallback_is_the_first_yaml_by_name_that_is_not_a_survey_and_says_so() -> None:
    files = {
        "test/playbooks/deploy_nginx.yml": b"- hosts: web\n",
        "test/playbooks/test_realtime.yml": b"- hosts: all\n",
    }
    reads: list[str] = []
    names = ["test_realtime.yml", "survey.yml", "deploy_nginx.yml", "nginx_site.conf.j2"]
    entry, [note] = choose_entry("test/playbooks", names, reader(files, reads))
    assert entry == "deploy_nginx.yml"
    assert (note.file, note.line) == ("test/playbooks/deploy_nginx.yml", None)
    assert note.message == (
        "no playbook.yml/main.yml/site.yml/deploy.yml; chose deploy_nginx.yml, the first *.yml/*.yaml by name "
        "that holds plays (others: test_realtime.yml)"
    )
    assert reads == ["test/playbooks/deploy_nginx.yml"]


def test_yaml_without_plays_is_passed_over_and_taken_only_when_nothing_holds_plays() -> None:
    files = {"requirements.yml": b"- src: x\n", "run.yaml": b"- hosts: all\n", "zz.yml": b"- hosts: all\n"}
    entry, [note] = choose_entry("", ["requirements.yml", "zz.yml", "run.yaml"], reader(files, []))
    assert entry == "run.yaml"
    assert note.message.endswith("that holds plays (passed over requirements.yml: no plays) (others: zz.yml)")
    only_vars = {"d/vars.yml": b"a: 1\n", "d/z.yml": b"b: 2\n"}
    entry, [note] = choose_entry("d", ["z.yml", "vars.yml"], reader(only_vars, []))
    assert entry == "vars.yml"
    assert "none of them holds plays" in note.message
    assert choose_entry("d", ["survey.yaml", "README.md"], reader({}, [])) == (None, ())


def test_what_roles_and_playbooks_put_on_hosts() -> None:
    playbook_directories = ["ansible/web"]
    content = [
        "roles/nginx/files/reload.sh",
        "site/roles/db/templates/backup.sh.j2",
        "ansible/web/files/check.sh",
        "ansible/web/templates/cron/render.py",
    ]
    other = [
        "scripts/files/cleanup.sh",
        "ansible/web/tools/check.sh",
        "ansible/web/tools/templates/gen.sh",
        "ansible/webfiles/files.sh",
        "ansible/files.sh",
        "files/x.sh",
    ]
    assert [path for path in content + other if is_playbook_content(path, playbook_directories)] == content
    assert is_playbook_content("files/x.sh", [""])
