"""Cleanup rules are validated at start: bad rules exit 2 naming the rule and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsq.cli.main import main
from opsq.core.config.cleanup import CleanupSettings, ResourceRef
from opsq.core.settings import load_settings

GOOD = """
cleanup:
  max_deletions_per_run: 500
  rules:
    - name: finished-jobs
      resource: batch/v1/jobs
      namespaces: {include: ["*"], exclude: ["kube-system"]}
      label_selector: "team=batch"
      when: {finished: true, older_than: 1h}
    - name: dead-pods
      resource: v1/pods
      when: {phase: [Succeeded, Failed], older_than: 30m}
  ttl_annotation: opsq.io/ttl
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "opsq.yaml"
    path.write_text(text)
    return path


def test_issue_example_is_accepted_with_safe_defaults(tmp_path: Path) -> None:
    cfg = load_settings(_write(tmp_path, GOOD)).cleanup
    assert cfg.dry_run is True
    jobs, pods = cfg.rules
    assert jobs.resource == ResourceRef(group="batch", version="v1", plural="jobs")
    assert pods.resource.group == ""
    assert str(pods.resource) == "v1/pods"
    assert jobs.when.older_than == 3600
    assert pods.when.older_than == 1800
    assert jobs.propagation_policy == "Background"
    assert jobs.grace_period_seconds is None
    assert jobs.delete_if_owner_exists is False


def test_crd_resources_and_set_based_selectors_are_accepted() -> None:
    cfg = CleanupSettings.model_validate(
        {
            "rules": [
                {
                    "name": "old-workflows",
                    "resource": "argoproj.io/v1alpha1/workflows",
                    "label_selector": "env in (dev, test),!keep,tier!=db",
                    "field_selector": "status.phase=Failed",
                    "when": {"older_than": "7d"},
                }
            ]
        }
    )
    assert cfg.rules[0].resource.api_version == "argoproj.io/v1alpha1"


@pytest.mark.parametrize(
    ("rule_yaml", "field", "hint"),
    [
        ("resource: jobs", "resource", "group/version/plural"),
        ("resource: batch/jobs", "resource", "group/version/plural"),
        ("resource: v1/pods\n      when: {older_than: -300}", "when.older_than", "negative"),
        ("resource: v1/pods\n      when: {older_than: -5m}", "when.older_than", "duration"),
        (
            "resource: v1/pods\n      label_selector: 'app=(x'\n      when: {older_than: 1h}",
            "label_selector",
            "not a requirement",
        ),
        (
            "resource: v1/pods\n      label_selector: 'a b'\n      when: {older_than: 1h}",
            "label_selector",
            "not a requirement",
        ),
        ("resource: v1/pods\n      when: {}", "(name 'broken')", "no condition"),
        ("resource: v1/pods\n      when: {older_thn: 1h}", "when.older_thn", "unknown field"),
        # Hostile check F8: false was ignored, so this deleted running Jobs too.
        (
            "resource: batch/v1/jobs\n      when: {finished: false, older_than: 1d}",
            "when.finished",
            "false is not a condition",
        ),
        # F7: jmespath finds unknown functions and wrong arities only while searching.
        ("resource: v1/pods\n      when: {match: 'nosuchfn(status)'}", "when.match", "lacks"),
        ("resource: v1/pods\n      when: {match: 'length(a, b)'}", "when.match", "takes 1"),
    ],
)
def test_bad_rule_exits_2_naming_rule_index_name_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rule_yaml: str, field: str, hint: str
) -> None:
    text = f"""
cleanup:
  rules:
    - name: fine
      resource: v1/pods
      when: {{older_than: 1h}}
    - name: broken
      {rule_yaml}
"""
    path = _write(tmp_path, text)
    with pytest.raises(SystemExit) as exit_info:
        main(["cleanup", "--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert str(path) in err
    assert "rules[1] (name 'broken')" in err
    assert field in err
    assert hint in err


def test_duplicate_rule_names_are_refused() -> None:
    rule = {"name": "a", "resource": "v1/pods", "when": {"older_than": 1}}
    with pytest.raises(ValueError, match="appears twice"):
        CleanupSettings.model_validate({"rules": [rule, rule]})
