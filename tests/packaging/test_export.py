"""``otelres export DIR``: the shipped files (package data under otelres/assets) written out with the
options filled in; refusals and bad options; and the wheel carrying every one of them.

What the exported files must pass (promtool, amtool, the dashboard's checks, compose config) is
tests/observability's: those tests run on exported trees, with the defaults and with every option set.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.parse
import zipfile
from pathlib import Path

import pytest
import yaml

import otelres
from otelres import _export
from otelres.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "otelres" / "assets"
OPTIONS = {
    "job": "Checkout_API.v2",
    "jaeger_url": "https://tools.example.com/jaeger/",
    "runbook_base": "https://runbooks.example.com/otelres",
}
#: What OPTIONS make of each token.
FILLED = {
    _export.JOB: "Checkout_API.v2",
    _export.K8S_NAME: "checkout-api-v2",
    _export.JAEGER_URL: "https://tools.example.com/jaeger",
    _export.RUNBOOK_BASE: "https://runbooks.example.com/otelres/",
    _export.VERSION: otelres.__version__,
}
ALERTS = (
    "OtelresCircuitOpen",
    "OtelresCircuitFlapping",
    "OtelresRetryStorm",
    "OtelresRetryBudgetExhausted",
    "OtelresLoadShedding",
)


def _files(directory: Path) -> dict[str, bytes]:
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otelres", "export", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_assets_are_every_file_under_otelres_assets() -> None:
    """asset_paths() lists the package data as it is in the source tree, nothing left out."""
    on_disk = sorted(path for path in _files(ASSETS) if "__pycache__" not in path)
    assert _export.asset_paths() == on_disk
    assert {
        "compose.yaml",
        "dashboards/otelres-overview.json",
        "demo/Dockerfile",
        "prometheus/otelres-alerts.yml",
        "prometheus/otelres-alerts.test.yml",
        "prometheus/prometheus.yml",
        "alertmanager/alertmanager.yml",
        "grafana/provisioning/alerting/otelres-alerts.yml",
        "grafana/provisioning/dashboards/otelres.yml",
        "grafana/provisioning/datasources/otelres.yml",
        "kubernetes/deployment.yaml",
        "kubernetes/prometheusrule.yaml",
        *(f"runbooks/{alert}.md" for alert in ALERTS),
    } == set(on_disk)


def test_the_templates_use_only_known_tokens_and_every_token_is_used() -> None:
    """Every @OTELRES_...@ in the package data is one export fills in, and each is somewhere."""
    used: set[str] = set()
    for path, data in _files(ASSETS).items():
        found = set(_export.TOKEN.findall(data.decode("utf-8")))
        assert found <= set(_export.TOKENS), (path, found - set(_export.TOKENS))
        used |= found
    assert used == set(_export.TOKENS)


def test_export_fills_in_every_option_and_changes_nothing_else(tmp_path: Path) -> None:
    """Each exported file is its template with exactly the tokens replaced, and no token left."""
    done = _export.export(tmp_path, **OPTIONS)
    written = _files(tmp_path)
    templates = _files(ASSETS)
    assert sorted(written) == sorted(templates)
    assert [path.relative_to(tmp_path).as_posix() for path in done.files] == sorted(templates)
    for path, data in written.items():
        text = data.decode("utf-8")
        assert not _export.TOKEN.search(text), path
        assert "@OTELRES" not in text, path
        expected = templates[path].decode("utf-8")
        for token, value in FILLED.items():
            expected = expected.replace(token, value)
        assert text == expected, path
    assert (done.job, done.jaeger_url, done.runbook_base) == (
        FILLED[_export.JOB],
        FILLED[_export.JAEGER_URL],
        FILLED[_export.RUNBOOK_BASE],
    )


def test_the_options_land_where_they_are_used(tmp_path: Path) -> None:
    """The job: scrape job, demo service name, Kubernetes labels/env/jobLabel, dashboard's first job;
    the Jaeger URL: the dashboard's default; the runbook base: every runbook_url; the version: the demo's.
    """
    _export.export(tmp_path, **OPTIONS)
    job, k8s = FILLED[_export.JOB], FILLED[_export.K8S_NAME]
    prometheus = yaml.safe_load((tmp_path / "prometheus/prometheus.yml").read_text())
    assert job in [scrape["job_name"] for scrape in prometheus["scrape_configs"]]
    compose = yaml.safe_load((tmp_path / "compose.yaml").read_text())
    assert compose["services"]["demo"]["environment"]["OTEL_SERVICE_NAME"] == job
    dockerfile = (tmp_path / "demo/Dockerfile").read_text()
    assert f'"otelres[demo]=={otelres.__version__}"' in dockerfile
    documents = list(yaml.safe_load_all((tmp_path / "kubernetes/deployment.yaml").read_text()))
    assert {d["metadata"]["name"] for d in documents} == {k8s}
    assert {d["metadata"]["labels"]["app.kubernetes.io/name"] for d in documents} == {job}
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "OTEL_SERVICE_NAME", "value": job} in container["env"]
    board = json.loads((tmp_path / "dashboards/otelres-overview.json").read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["job"]["current"]["value"] == [job]
    assert variables["jaeger_url"]["query"] == FILLED[_export.JAEGER_URL]
    for rules_file in (
        "prometheus/otelres-alerts.yml",
        "grafana/provisioning/alerting/otelres-alerts.yml",
    ):
        rules = [r for g in yaml.safe_load((tmp_path / rules_file).read_text())["groups"] for r in g["rules"]]
        for rule in rules:
            name = rule.get("alert") or rule["title"].removesuffix("Critical")
            assert rule["annotations"]["runbook_url"] == f"https://runbooks.example.com/otelres/{name}.md"
    resource = yaml.safe_load((tmp_path / "kubernetes/prometheusrule.yaml").read_text())
    urls = {r["annotations"]["runbook_url"] for g in resource["spec"]["groups"] for r in g["rules"]}
    assert urls == {f"https://runbooks.example.com/otelres/{alert}.md" for alert in ALERTS}


def test_by_default_the_runbook_urls_are_the_exported_runbooks(tmp_path: Path) -> None:
    """Without --runbook-base, runbook_url is the file:// URL of the runbook written beside the rules,
    and the job and Jaeger URL are the demo's.
    """
    done = _export.export(tmp_path / "out dir")
    rules = yaml.safe_load((done.directory / "prometheus/otelres-alerts.yml").read_text())
    for rule in rules["groups"][0]["rules"]:
        url = urllib.parse.urlsplit(rule["annotations"]["runbook_url"])
        assert url.scheme == "file"
        page = Path(urllib.parse.unquote(url.path))
        assert page == (done.directory / "runbooks" / f"{rule['alert']}.md").resolve()
        assert page.read_text().startswith(f"# {rule['alert']}\n")
    assert (done.job, done.jaeger_url) == (_export.DEFAULT_JOB, _export.DEFAULT_JAEGER_URL)


def test_cli_prints_every_file_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`otelres export DIR` lists what it wrote and the values it used; exit 0."""
    directory = tmp_path / "ops"
    assert (
        main(
            ["export", str(directory), "--job", "checkout", "--runbook-base", "https://wiki.example.com/rb/"]
        )
        == 0
    )
    out = capsys.readouterr().out
    for path in _export.asset_paths():
        assert f"  {path}\n" in out
        assert (directory / path).is_file()
    assert "job checkout" in out
    assert "https://wiki.example.com/rb/<alert>.md" in out


def test_export_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    """One file in the way: exit 1 naming it and --force, nothing written; --force overwrites it."""
    (tmp_path / "prometheus").mkdir()
    mine = tmp_path / "prometheus" / "prometheus.yml"
    mine.write_text("mine\n")
    result = _cli(str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "prometheus.yml" in result.stderr
    assert "--force" in result.stderr
    assert "Traceback" not in result.stderr
    assert mine.read_text() == "mine\n"
    assert sorted(_files(tmp_path)) == ["prometheus/prometheus.yml"]
    forced = _cli(str(tmp_path), "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "job_name" in mine.read_text()
    assert sorted(_files(tmp_path)) == _export.asset_paths()


def test_force_replaces_a_link_instead_of_writing_through_it(tmp_path: Path) -> None:
    """--force replaces a symlink in the way; the file it pointed at is untouched."""
    outside = tmp_path / "outside.yml"
    outside.write_text("keep\n")
    directory = tmp_path / "out"
    (directory / "alertmanager").mkdir(parents=True)
    (directory / "alertmanager" / "alertmanager.yml").symlink_to(outside)
    with pytest.raises(_export.ExportError, match="already exist"):
        _export.export(directory)
    _export.export(directory, force=True)
    assert outside.read_text() == "keep\n"
    assert not (directory / "alertmanager" / "alertmanager.yml").is_symlink()


def test_export_into_a_file_is_an_error_without_traceback(tmp_path: Path) -> None:
    """DIR naming a file: exit 1 and a one-line reason."""
    target = tmp_path / "taken"
    target.write_text("")
    result = _cli(str(target), cwd=tmp_path)
    assert result.returncode == 1
    assert "is not a directory" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("--job", "check out", "--job must be"),
        ("--job", "-checkout", "--job must be"),
        ("--job", "checkout-", "--job must be"),
        ("--job", "x" * 64, "--job must be"),
        ("--job", 'a"b', "--job must be"),
        ("--job", "", "--job must be"),
        ("--jaeger-url", "localhost:16686", "scheme http or https"),
        ("--jaeger-url", "ftp://jaeger.example.com", "scheme http or https"),
        ("--jaeger-url", "/jaeger", "scheme http or https"),
        ("--jaeger-url", "http://", "a host"),
        ("--jaeger-url", "http://jaeger.example.com:99999", "a host"),
        ("--jaeger-url", "http://jaeger.example.com:0", "a host"),
        ("--jaeger-url", "http://jaeger.example.com/?x=1", "no query or fragment"),
        ("--jaeger-url", "http://jaeger.example.com/#top", "no query or fragment"),
        ("--jaeger-url", "http://jaeger example.com", "URL characters only"),
        ("--runbook-base", 'https://wiki.example.com/"runbooks"', "URL characters only"),
        ("--runbook-base", "https://wiki.example.com/{{ $labels.job }}", "URL characters only"),
        ("--runbook-base", "https://wiki.example.com/%zz", "URL characters only"),
        ("--runbook-base", "file:///srv/runbooks/", "scheme http or https"),
        ("--runbook-base", "https://bob:s3cret@wiki.example.com/", "no user or password"),
    ],
)
def test_bad_options_exit_2_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, reason: str
) -> None:
    """A bad option: exit 2 with the export's usage and the reason, nothing written."""
    with pytest.raises(SystemExit) as exited:
        main(["export", str(tmp_path / "out"), f"{option}={value}"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: otelres export")
    assert reason in err
    assert "s3cret" not in err  # a password is never echoed
    assert not (tmp_path / "out").exists()


def test_bad_option_from_the_command_line_has_no_traceback(tmp_path: Path) -> None:
    """`python -m otelres export DIR --jaeger-url ...` with a bad URL: exit 2, usage, no traceback."""
    result = _cli("out", "--jaeger-url", "jaeger:16686", cwd=tmp_path)
    assert result.returncode == 2
    assert "otelres export: error: --jaeger-url must be an absolute http:// or https:// URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_urls_are_normalised_for_how_they_are_joined(tmp_path: Path) -> None:
    """The Jaeger URL loses a trailing / (the links append /search); the runbook base gains one."""
    done = _export.export(
        tmp_path, jaeger_url="https://jaeger.example.com/", runbook_base="https://wiki.example.com/rb"
    )
    assert done.jaeger_url == "https://jaeger.example.com"
    assert done.runbook_base == "https://wiki.example.com/rb/"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel pip builds from the repository (build isolation: the build backend as users get it)."""
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "-w",
            str(out),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = out.glob("otelres-*.whl")
    return built


def test_the_wheel_holds_every_asset(wheel: Path) -> None:
    """Every shipped file is in the wheel, under otelres/assets/."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    shipped = {name.removeprefix("otelres/assets/") for name in names if name.startswith("otelres/assets/")}
    assert shipped == set(_export.asset_paths())


def test_export_from_the_wheel_writes_what_the_source_tree_does(wheel: Path, tmp_path: Path) -> None:
    """otelres imported from the wheel alone (not the checkout) exports the same tree, byte for byte."""
    env = {**os.environ, "PYTHONPATH": str(wheel)}
    where = subprocess.run(
        [sys.executable, "-c", "import otelres; print(otelres.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert where.stdout.strip().startswith(str(wheel)), where.stdout
    options = [
        "--job",
        OPTIONS["job"],
        "--jaeger-url",
        OPTIONS["jaeger_url"],
        "--runbook-base",
        OPTIONS["runbook_base"],
    ]
    result = subprocess.run(
        [sys.executable, "-m", "otelres", "export", "from-wheel", *options],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    _export.export(tmp_path / "from-source", **OPTIONS)
    from_wheel, from_source = _files(tmp_path / "from-wheel"), _files(tmp_path / "from-source")
    assert from_wheel == from_source
    assert re.search(r"wrote \d+ files to from-wheel", result.stdout)


def test_a_directory_that_cannot_be_made_is_an_error_without_traceback(tmp_path: Path) -> None:
    """DIR below a file: exit 1 with what could not be written."""
    (tmp_path / "file").write_text("")
    result = _cli(str(tmp_path / "file" / "out"), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("otelres export: cannot write ")
    assert "Traceback" not in result.stderr


def test_render_refuses_a_token_it_does_not_know() -> None:
    """A template token without a value is an error, not a token left in a user's file."""
    assert _export.render("job: @OTELRES_JOB@", {_export.JOB: "a"}) == "job: a"
    with pytest.raises(_export.ExportError, match="@OTELRES_NEW@"):
        _export.render("@OTELRES_NEW@", {_export.JOB: "a"})
