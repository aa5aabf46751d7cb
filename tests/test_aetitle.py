import pytest

from portal.aetitle import InvalidAETitle, normalize_ae_title


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ECHO1", "ECHO1"),
        ("Room1_EPIQ7", "Room1_EPIQ7"),
        ("ClinicA_Vivid95", "ClinicA_Vivid95"),
        ("Mobile_CT_Unit", "Mobile_CT_Unit"),
        ("  PADDED  ", "PADDED"),
        ("A", "A"),
        ("SIXTEEN_CHARS_AE", "SIXTEEN_CHARS_AE"),
        ("  SIXTEEN_CHARS_AE  ", "SIXTEEN_CHARS_AE"),
        ("CATH LAB 2", "CATH LAB 2"),
        ("lower-case.ok", "lower-case.ok"),
        ("SYMBOLS!#$%&*+", "SYMBOLS!#$%&*+"),
    ],
)
def test_valid_ae_titles_normalized(value, expected):
    assert normalize_ae_title(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "at least one character"),
        ("    ", "at least one character"),
        ("SEVENTEEN_CHARS_X", "at most 16 characters"),
        ("BACK\\SLASH", "backslash"),
        ("TAB\tAE", "printable ASCII"),
        ("NEW\nLINE", "printable ASCII"),
        ("ESC\x1bAE", "printable ASCII"),
        ("DEL\x7fAE", "printable ASCII"),
        ("ÉCHO", "printable ASCII"),
        ("ECHO\u00a0", "printable ASCII"),
    ],
)
def test_invalid_ae_titles_rejected(value, message):
    with pytest.raises(InvalidAETitle, match=message):
        normalize_ae_title(value)
