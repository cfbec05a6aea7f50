import pytest

from replicator.yearmonth import YearMonth


@pytest.mark.parametrize(
    "text",
    [
        "2026-13",
        "2026-1",
        "../x",
        "2026-02;DROP",
        "2026-00",
        "26-01",
        " 2026-01",
        "2026-01\n",
        "",
        "0000-01",
        "\uff12\uff10\uff12\uff16-01",
    ],
)
def test_rejects_anything_but_yyyy_mm(text: str) -> None:
    with pytest.raises(ValueError, match="year-month"):
        YearMonth.parse(text)


def test_round_trip_and_arithmetic() -> None:
    month = YearMonth.parse("2026-01")
    assert str(month) == "2026-01"
    assert str(month.shifted(-1)) == "2025-12"
    assert str(month.shifted(12)) == "2027-01"
    assert month.lock_key == 202601
    assert YearMonth.parse("2025-12") < month
