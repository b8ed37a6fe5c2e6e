"""`peftkit serve`'s command line: bad flags end with status 2 and a message, before any model loads."""

import pytest


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--adapter", "no-equals-sign"], "--adapter takes NAME=FOLDER"),
        (["--adapter", "x=/does/not/exist"], "does not exist"),
        (["--max-batch", "0"], "--max-batch must be positive"),
        (["--max-resident-mb", "-1"], "--max-resident-mb must be positive"),
    ],
)
def test_bad_serve_flags_are_clear_errors(cli, tmp_path, args, message):
    code, _, err = cli("serve", "--model", str(tmp_path / "nowhere"), *args)
    assert code == 2 and message in err


def test_an_adapters_dir_without_adapters_is_an_error(cli, tmp_path):
    code, _, err = cli("serve", "--adapters-dir", str(tmp_path))
    assert code == 2 and "holds no adapter sub-folder" in err
