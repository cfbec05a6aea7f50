import pytest

from replicator.secrets import Dsn, scrub_any

CANARY = "Cn4ry p@ss%w'o\"rd"
SHAPES = [
    "postgresql://writer:Cn4ry%20p%40ss%25w'o%22rd@db.example:5432/signals",
    "postgresql://writer@db.example/signals?password=Cn4ry%20p%40ss%25w'o%22rd",
    "host=db.example user=writer password='Cn4ry p@ss%w\\'o\"rd' dbname=signals",
]


@pytest.mark.parametrize("raw", SHAPES)
def test_repr_and_scrub_never_show_the_password(raw: str) -> None:
    dsn = Dsn(raw)
    assert CANARY not in repr(dsn)
    assert CANARY not in str(dsn)
    message = f"failed with {raw} and {CANARY} and password={CANARY}"
    scrubbed = dsn.scrub(message)
    assert "Cn4ry" not in scrubbed
    assert "db.example:5432/signals" in dsn.target


def test_scrub_any_masks_password_fields() -> None:
    assert "hunter2" not in scrub_any("connect password=hunter2 host=x")
    assert "hunter2" not in scrub_any("postgresql://u:hunter2@h/db")
