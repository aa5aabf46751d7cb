import pytest

from portal.networks import InvalidNetwork, parse_network, split_entries, validate_networks


@pytest.mark.parametrize(
    ("entry", "normalized"),
    [
        ("10.1.4.23", "10.1.4.23/32"),
        (" 10.1.4.0/24 ", "10.1.4.0/24"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("fd00::/64", "fd00::/64"),
        ("FD00::1", "fd00::1/128"),
        ("::1", "::1/128"),
        ("10.1.4.23/32", "10.1.4.23/32"),
    ],
)
def test_valid_networks(entry, normalized):
    assert str(parse_network(entry)) == normalized


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("", "an entry is empty"),
        ("10.1.4", "is not an IP address or range"),
        ("10.1.4.256", "is not an IP address or range"),
        ("10.1.4.0/33", "is not an IP address or range"),
        ("host.example", "is not an IP address or range"),
        ("10.1.4.5/24", "has host bits set: the range is 10.1.4.0/24"),
        ("fd00::1/64", "has host bits set: the range is fd00::/64"),
        ("10.1.4.0/24/1", "is not an IP address or range"),
        ("fd00::/129", "is not an IP address or range"),
    ],
)
def test_invalid_networks(entry, message):
    with pytest.raises(InvalidNetwork, match=message):
        parse_network(entry)


def test_duplicates_rejected():
    normalized, errors = validate_networks(["10.1.4.0/24", "10.1.4.23", "10.1.4.23/32", "fd00::/64", "FD00::/64"])
    assert normalized == ["10.1.4.0/24", "10.1.4.23/32", "fd00::/64"]
    assert errors == {2: "'10.1.4.23/32' repeats '10.1.4.23'", 4: "'FD00::/64' repeats 'fd00::/64'"}


def test_errors_keep_position():
    normalized, errors = validate_networks(["10.1.4.0/24", "bad", "10.1.4.5/24"])
    assert normalized == ["10.1.4.0/24"]
    assert set(errors) == {1, 2}


def test_split_entries():
    assert split_entries("10.1.4.0/24\n\n fd00::/64, 10.1.4.23 \n") == ["10.1.4.0/24", "fd00::/64", "10.1.4.23"]
