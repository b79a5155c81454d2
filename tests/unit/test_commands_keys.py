"""``sealtrail keys generate``: C2SP key names, safe file names, one sentence for bad names."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from processors.integrity.keys import load_signer
from sealtrail.cli import app
from sealtrail.commands.key_options import load_keyring

runner = CliRunner()


def test_origin_style_name_is_accepted(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    result = runner.invoke(
        app, ["keys", "generate", "--name", "example.com/audit", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    private, public = out / "example.com%2Faudit.key", out / "example.com%2Faudit.pub"
    assert str(private) in result.output and str(public) in result.output
    assert "PRIVATE+KEY" not in result.output
    assert private.stat().st_mode & 0o777 == 0o600
    verifier_key = public.read_text().strip()
    assert verifier_key.startswith("example.com/audit+")
    signer = load_signer(private)
    assert signer.name == "example.com/audit"
    # The verifier key works as a file and as the string itself, although its name has a '/'.
    assert load_keyring(str(public)).verifiers() == [signer.verifier]
    assert load_keyring(verifier_key).verifiers() == [signer.verifier]


def test_bad_names_get_one_sentence(tmp_path: Path) -> None:
    for name in ("a b", "a+b", ""):
        result = runner.invoke(app, ["keys", "generate", "--name", name, "--out", str(tmp_path)])
        assert result.exit_code == 2, result.output
        assert "is not a valid signed-note key name" in result.output
        assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_keys_generate(tmp_path: Path) -> None:
    out = tmp_path / "k"
    args = ["keys", "generate", "--name", "prod.example", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    private, public = out / "prod.example.key", out / "prod.example.pub"
    assert str(private) in result.output and str(public) in result.output
    assert public.read_text().strip() in result.output
    assert "PRIVATE+KEY" not in result.output
    assert private.stat().st_mode & 0o777 == 0o600
    assert load_signer(private).verifier.verifier_key() == public.read_text().strip()
    again = runner.invoke(app, args)
    assert again.exit_code == 2
    assert "refusing to overwrite" in again.output
    assert "Traceback" not in again.output


def test_keys_generate_default_dir_and_bad_name(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = runner.invoke(app, ["--home", str(home), "keys", "generate", "--name", "other"])
    assert result.exit_code == 0, result.output
    assert (home / "keys" / "other.key").exists()
    bad = runner.invoke(app, ["--home", str(home), "keys", "generate", "--name", "a+b"])
    assert bad.exit_code == 2


def test_malformed_key_messages_name_a_real_command(tmp_path: Path) -> None:
    """A malformed key file's message says how to make a new one with a command that exists."""
    import re

    import pytest

    from processors.integrity.checkpoint import KeyRing
    from sealtrail.infra.errors import KeyFileError

    bad_private = tmp_path / "bad.key"
    bad_private.write_text("PRIVATE+KEY+name+0000000g+AAAA\n")
    bad_private.chmod(0o600)
    not_private = tmp_path / "other.key"
    not_private.write_text("name+00000000+AAAA\n")
    not_private.chmod(0o600)
    messages = []
    for load in (
        lambda: load_signer(bad_private),
        lambda: load_signer(not_private),
        lambda: KeyRing.parse("name+00000000+AAAA\n"),
    ):
        with pytest.raises(KeyFileError) as err:
            load()
        messages.append(str(err.value))
    for message in messages:
        assert "keygen" not in message, message
        commands = re.findall(r"`sealtrail ([^`]*)`", message)
        assert commands, message
        for command in commands:
            args = [a if a != "NAME" else "fresh" for a in command.split()]
            out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
            result = runner.invoke(app, [*args, "--out", str(out)])
            assert result.exit_code == 0, (command, result.output)
            assert (out / "fresh.pub").exists()


def test_pub_file_is_one_line_and_hash_names(tmp_path: Path) -> None:
    """docs/FORMAT.md sections 6-7: a .pub file is the verifier key and one newline; a name may
    hold '#', but not start with it (a key ring line starting with '#' is a comment)."""
    out = tmp_path / "k"
    result = runner.invoke(app, ["keys", "generate", "--name", "audit#2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = (out / "audit%232.pub").read_text(encoding="utf-8")
    assert text.endswith("\n") and text.count("\n") == 1 and text.startswith("audit#2+")
    assert load_keyring(str(out / "audit%232.pub")).verifiers()[0].name == "audit#2"
    bad = runner.invoke(app, ["keys", "generate", "--name", "#audit", "--out", str(out)])
    assert bad.exit_code == 2, bad.output
    assert "starts with '#'" in bad.output and "Traceback" not in bad.output
    assert sorted(p.name for p in out.iterdir()) == ["audit%232.key", "audit%232.pub"]
