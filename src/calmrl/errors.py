"""The error a user fixes by changing a config value. A leaf module: anything may import it, it imports nothing of
calmrl, so raising it never pulls in (or cycles through) the schemas or the loops."""


class ConfigError(ValueError):
    """A config value a user must change; the message says which and how (`calmrl: error: <message>`)."""


def require(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless `ok`: the one-line form of every range check."""
    if not ok:
        raise ConfigError(message)
