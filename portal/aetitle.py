"""AE title rules of DICOM PS3.5 (value representation AE)."""

MAX_LENGTH = 16


class InvalidAETitle(ValueError):
    """A value that is not a valid AE title. The message gives the reason."""


def normalize_ae_title(value: str) -> str:
    """Strip the padding spaces of `value` and return it if it is a valid AE title.

    PS3.5 allows at most 16 characters of the default character repertoire
    (printable ASCII), no backslash and no control characters. Leading and
    trailing spaces are padding; everything else, case included, is significant.
    """
    stripped = value.strip(" ")
    if not stripped:
        raise InvalidAETitle("an AE title needs at least one character other than a space")

    if len(stripped) > MAX_LENGTH:
        raise InvalidAETitle(f"an AE title has at most {MAX_LENGTH} characters; this one has {len(stripped)}")

    for character in stripped:
        if character == "\\":
            raise InvalidAETitle("an AE title may not contain a backslash")
        if not " " <= character <= "~":
            raise InvalidAETitle(
                f"an AE title may contain only printable ASCII characters, not {character!r}"
            )
    return stripped
