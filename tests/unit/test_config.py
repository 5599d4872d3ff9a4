"""Layered configuration: which layer wins, where each value came from, how placeholders resolve
(structurally, keeping types) and which mistakes are named."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from provisioning.config import (
    DEFAULTS_FILE,
    Config,
    Layer,
    load_config,
    parse_assignments,
)
from provisioning.errors import ConfigurationError
from provisioning.secrets import MASK


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project directory; no environment layer unless a test asks for one."""
    monkeypatch.delenv("PROVISIONING_ENV", raising=False)
    monkeypatch.delenv("PROVISIONING_BASE", raising=False)
    base = tmp_path / "project"
    base.mkdir()
    return base


def write(path: Path, values: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(values), encoding="utf-8")
    return path


def load(project: Path, values: dict[str, Any], **kwargs: Any) -> Config:
    write(project / "config.user.toml", values)
    return load_config(project, **kwargs)


def config_error(project: Path, values: dict[str, Any]) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as caught:
        load(project, values)
    assert caught.value.exit_code == 2
    return caught.value


# ------------------------------------------------------------------------------------ layers


def test_defaults_alone(project: Path) -> None:
    config = load_config(project)

    assert config.get("engine.parallelism") == 10
    assert config.get("engine.on_failure") == "rollback"
    assert config.provider("aws")["region"] == "us-east-1"
    assert config.sources["engine.parallelism"] == str(DEFAULTS_FILE)
    assert config.get("no.such.key", "fallback") == "fallback"
    assert config.section("engine.parallelism") == {}


def test_each_layer_overrides_the_one_below(project: Path) -> None:
    user = write(
        project / "config.user.toml",
        {"engine": {"parallelism": 2, "retries": 5, "retry_backoff": 0.5, "on_failure": "keep"}},
    )
    staging = write(
        project / "config.staging.toml", {"engine": {"retries": 7, "retry_backoff": 0.25}}
    )
    extra = Layer("workflow wf-1", {"engine": {"retry_backoff": 0.125, "retry_jitter": 0.0}})

    config = load_config(
        project, env="staging", extra_layers=[extra], overrides=["engine.retry_jitter=0.75"]
    )

    engine = config.section("engine")
    assert engine["parallelism"] == 2  # user over defaults
    assert engine["retries"] == 7  # environment file over user
    assert engine["retry_backoff"] == 0.125  # extra layer over environment file
    assert engine["retry_jitter"] == 0.75  # --set over everything
    assert engine["on_failure"] == "keep"
    assert config.sources["engine.parallelism"] == str(user)
    assert config.sources["engine.on_failure"] == str(user)
    assert config.sources["engine.retries"] == str(staging)
    assert config.sources["engine.retry_backoff"] == "workflow wf-1"
    assert config.sources["engine.retry_jitter"] == "--set"
    assert config.sources["journal.url"] == str(DEFAULTS_FILE)
    assert config.sources["paths.base"] == "project directory"


def test_the_environment_file_comes_from_provisioning_env(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(project / "config.prod.toml", {"engine": {"retries": 9}})
    monkeypatch.setenv("PROVISIONING_ENV", "prod")

    assert load_config(project).get("engine.retries") == 9
    assert load_config(project, env="").get("engine.retries") == 3


def test_the_project_directory_comes_from_provisioning_base(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(project / "config.user.toml", {"engine": {"retries": 1}})
    monkeypatch.setenv("PROVISIONING_BASE", str(project))

    config = load_config()

    assert config.get("engine.retries") == 1
    assert config.get("paths.base") == str(project.resolve())


def test_deep_merge_keeps_sibling_keys(project: Path) -> None:
    config = load(
        project,
        {
            "providers": {"aws": {"region": "eu-west-1"}, "mine": {"flavour": "x"}},
            "engine": {"retries": 1},
        },
    )

    aws = config.provider("aws")
    assert aws["region"] == "eu-west-1"
    assert aws["timeout"] == 300  # sibling from the defaults survives
    assert aws["endpoint_url"] == ""
    assert config.provider("upcloud")["zone"] == "de-fra1"  # sibling table untouched
    assert config.provider("mine") == {"flavour": "x"}
    assert config.get("engine.parallelism") == 10
    assert config.sources["providers.aws.region"].endswith("config.user.toml")
    assert config.sources["providers.aws.timeout"] == str(DEFAULTS_FILE)
    assert config.sources["providers.mine.flavour"].endswith("config.user.toml")


def test_a_scalar_replacing_a_table_drops_the_old_sources(project: Path) -> None:
    config = load(project, {"api": "off"})

    assert config.get("api") == "off"
    assert config.sources["api"].endswith("config.user.toml")
    assert not any(key.startswith("api.") for key in config.sources)


def test_with_layer_adds_a_layer_on_top(project: Path) -> None:
    config = load_config(project)

    layered = config.with_layer(Layer("notebook", {"engine": {"parallelism": 3}}))

    assert layered.get("engine.parallelism") == 3
    assert layered.sources["engine.parallelism"] == "notebook"
    assert config.get("engine.parallelism") == 10


def test_invalid_toml_in_a_layer_names_the_file(project: Path) -> None:
    user = project / "config.user.toml"
    user.write_text("[engine\nretries = 1\n")

    with pytest.raises(ConfigurationError) as caught:
        load_config(project)

    assert str(caught.value).startswith(f"{user}: invalid TOML")


# ------------------------------------------------------------------------------ interpolation


def test_paths_base_and_settings_placeholders(project: Path) -> None:
    config = load_config(project)

    base = str(project.resolve())
    assert config.get("paths.base") == base
    assert config.get("paths.state") == f"{base}/.provisioning"
    assert config.state_dir == Path(base) / ".provisioning"
    assert config.get("journal.url") == f"sqlite:///{base}/.provisioning/journal.db"
    assert config.get("extensions.paths") == [f"{base}/extensions"]


def test_a_moved_state_dir_moves_what_refers_to_it(project: Path) -> None:
    config = load(project, {"paths": {"state": "{{paths.base}}/var"}})

    assert config.get("journal.url") == f"sqlite:///{project.resolve()}/var/journal.db"


def test_env_and_now_placeholders(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/tester")
    before = datetime.now(UTC).strftime("%Y-%m-%d")

    config = load(project, {"app": {"home": "{{env.HOME}}/app", "day": "log-{{ now.date }}"}})

    after = datetime.now(UTC).strftime("%Y-%m-%d")
    assert config.get("app.home") == "/home/tester/app"
    assert config.get("app.day") in {f"log-{before}", f"log-{after}"}


def test_git_branch_placeholder(project: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)

    git("init", "-q", "-b", "feature/web")
    git(
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.com",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "init",
    )

    config = load(project, {"app": {"release": "web-{{git.branch}}"}})

    assert config.get("app.release") == "web-feature/web"


def test_git_branch_outside_a_work_tree_is_named(project: Path) -> None:
    error = config_error(project, {"app": {"release": "{{git.branch}}"}})

    assert "'{{git.branch}}' cannot be read" in str(error)
    assert error.context["field"] == "app.release"


def test_a_lone_placeholder_keeps_the_type_of_what_it_names(project: Path) -> None:
    config = load(
        project,
        {
            "app": {
                "workers": "{{engine.parallelism}}",
                "backoff": "{{ engine.retry_backoff }}",
                "aws": "{{providers.aws}}",
                "paths": "{{extensions.paths}}",
                "label": "x{{engine.parallelism}}",
            }
        },
    )

    assert config.get("app.workers") == 10
    assert config.get("app.backoff") == 1.0
    assert config.get("app.aws") == config.provider("aws")
    assert config.get("app.paths") == config.get("extensions.paths")
    assert config.get("app.label") == "x10"


def test_references_follow_later_layers(project: Path) -> None:
    write(project / "config.user.toml", {"app": {"workers": "{{engine.parallelism}}"}})

    config = load_config(project, overrides=["engine.parallelism=3"])

    assert config.get("app.workers") == 3


@pytest.mark.parametrize(
    "value",
    [
        "say \"hi\" and 'bye'",
        "{{paths.base}} stays {{ literal }}",
        '"] = 1\n[evil]\nx = "y',
        "a\\b\tc # not a comment = {}",
    ],
    ids=["quotes", "braces", "toml-injection", "escapes"],
)
def test_interpolation_is_structural(
    project: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("PROVISIONING_TEST_VALUE", value)

    config = load(
        project,
        {
            "app": {
                "lone": "{{env.PROVISIONING_TEST_VALUE}}",
                "inside": "<{{env.PROVISIONING_TEST_VALUE}}>",
                "after": "kept",
            }
        },
    )

    assert config.get("app.lone") == value
    assert config.get("app.inside") == f"<{value}>"
    assert config.get("app.after") == "kept"
    assert config.get("evil") is None
    assert set(config.section("app")) == {"lone", "inside", "after"}


def test_an_unknown_setting_placeholder_is_named(project: Path) -> None:
    error = config_error(project, {"app": {"url": "http://{{api.hots}}:9090"}})

    assert error.code == "CONFIG_UNKNOWN_VARIABLE"
    assert str(error) == "field 'app.url': unknown variable '{{api.hots}}'"


@pytest.mark.parametrize("placeholder", ["now.century", "git.sha", "nothing"])
def test_an_unknown_namespace_variable_is_named(project: Path, placeholder: str) -> None:
    error = config_error(project, {"app": {"x": f"{{{{{placeholder}}}}}"}})

    assert error.code == "CONFIG_UNKNOWN_VARIABLE"
    assert f"unknown variable '{{{{{placeholder}}}}}'" in str(error)


def test_an_unset_environment_variable_is_named(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVISIONING_TEST_UNSET", raising=False)

    error = config_error(project, {"app": {"token_file": "{{env.PROVISIONING_TEST_UNSET}}"}})

    assert error.code == "CONFIG_UNKNOWN_VARIABLE"
    assert str(error) == (
        "field 'app.token_file': unknown variable '{{env.PROVISIONING_TEST_UNSET}}': "
        "environment variable PROVISIONING_TEST_UNSET is not set"
    )


def test_a_reference_cycle_is_named(project: Path) -> None:
    error = config_error(project, {"a": {"x": "{{a.y}}", "y": "pre-{{a.x}}"}})

    assert error.code == "CONFIG_CYCLE"
    message = str(error)
    assert "placeholder cycle: " in message
    chain = message.split("placeholder cycle: ", 1)[1].split(" -> ")
    assert set(chain) == {"a.x", "a.y"}
    assert chain[0] == chain[-1]


def test_a_self_reference_is_a_cycle(project: Path) -> None:
    error = config_error(project, {"a": {"x": "{{a.x}}"}})

    assert error.code == "CONFIG_CYCLE"
    assert "placeholder cycle: a.x -> a.x" in str(error)


# ------------------------------------------------------------------------------------ secrets


def test_masked_hides_secrets_and_shows_the_rest(project: Path) -> None:
    config = load(
        project,
        {
            "api": {"token": "tok-123"},
            "providers": {
                "upcloud": {"username": "alice", "password": "pw-456"},
                "aws": {"aws_secret_access_key": "sk-789", "api_key": "k-000"},
            },
            "app": {"client_secret": "cs", "tokens": ["a", "b"]},
        },
    )

    masked = config.masked()

    assert masked["api"]["token"] == MASK
    assert masked["providers"]["upcloud"]["password"] == MASK
    assert masked["providers"]["aws"]["aws_secret_access_key"] == MASK
    assert masked["providers"]["aws"]["api_key"] == MASK
    assert masked["app"]["client_secret"] == MASK
    assert masked["app"]["tokens"] == MASK
    assert masked["providers"]["upcloud"]["username"] == "alice"
    assert masked["providers"]["aws"]["region"] == "us-east-1"
    assert masked["engine"] == config.section("engine")
    rendered = repr(masked)
    for secret in ("tok-123", "pw-456", "sk-789", "k-000", "'cs'"):
        assert secret not in rendered
    assert config.get("api.token") == "tok-123"  # masking is for display only


# ------------------------------------------------------------------------------------- --set


def test_set_values_are_read_as_toml_when_they_parse() -> None:
    layer = parse_assignments(
        [
            "engine.parallelism=4",
            "engine.retry_backoff = 0.5",
            "app.debug=true",
            "app.name=web server",
            "app.quoted='with = sign'",
            "app.list=[1, 2]",
            "app.empty=",
            "top=1",
        ]
    )

    assert layer.source == "--set"
    assert layer.values == {
        "engine": {"parallelism": 4, "retry_backoff": 0.5},
        "app": {
            "debug": True,
            "name": "web server",
            "quoted": "with = sign",
            "list": [1, 2],
            "empty": "",
        },
        "top": 1,
    }


@pytest.mark.parametrize("assignment", ["engine.retries", "=3", "a..b=1", "a b=1", ".a=1"])
def test_bad_set_syntax_is_named(assignment: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_assignments([assignment])

    assert str(caught.value) == f"--set: expected KEY=VALUE with a dotted key, got '{assignment}'"


@pytest.mark.parametrize("dotted", ["api.token", "providers.upcloud.password"])
def test_a_secret_cannot_be_set_on_the_command_line(dotted: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_assignments([f"{dotted}=hunter2"])

    message = str(caught.value)
    assert message.startswith(f"--set: '{dotted}' holds a secret and cannot be set with --set")
    assert "config.user.toml" in message and "hunter2" not in message
    assert parse_assignments([f"{dotted}="]).values  # clearing one reveals nothing


def test_bad_set_syntax_stops_load_config(project: Path) -> None:
    with pytest.raises(ConfigurationError, match="expected KEY=VALUE"):
        load_config(project, overrides=["engine.parallelism"])
