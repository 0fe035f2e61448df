"""The one error the data readers raise, and how they quote another error inside it."""


class DataError(ValueError):
    """Data on disk is missing or unusable; the message names the file and what to do."""


def reason(e: BaseException, limit: int = 160) -> str:
    """The first line of an exception's text, shortened, for quoting inside a one-line message."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= limit else text[:limit] + "..."
