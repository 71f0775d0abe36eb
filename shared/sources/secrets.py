"""Files holding credentials are not indexed: once embedded, a secret is returned by every search
that comes near it, to every reader of the collection.

Detection is detect-secrets' pattern plugins (keys and tokens with a recognisable shape: AWS, private
key blocks, GitHub, GitLab, Slack, Stripe, ...). Its entropy plugins (`Base64HighEntropyString`,
`HexHighEntropyString`), `KeywordDetector` (`password = ...` in any code) and `IPPublicDetector` are left
out: they flag ordinary prose and code (checksums, example addresses, configuration samples); on the
sample corpus (298 KEP files) they flagged 14 files, the plugins kept here flag none.
"""

from __future__ import annotations

from functools import lru_cache

PLUGINS = (
    "aws.AWSKeyDetector",
    "private_key.PrivateKeyDetector",
    "github_token.GitHubTokenDetector",
    "gitlab_token.GitLabTokenDetector",
    "slack.SlackDetector",
    "stripe.StripeDetector",
    "twilio.TwilioKeyDetector",
    "sendgrid.SendGridDetector",
    "openai.OpenAIDetector",
    "pypi_token.PypiTokenDetector",
    "npm.NpmDetector",
    "discord.DiscordBotTokenDetector",
    "telegram_token.TelegramBotTokenDetector",
    "mailchimp.MailchimpDetector",
    "azure_storage_key.AzureStorageKeyDetector",
    "square_oauth.SquareOAuthDetector",
)
# Checked line by line: its pattern matches any base64 run starting "eyJ"; `analyze_line` keeps only
# those that decode to a JWT.
JWT_PLUGIN = "jwt.JwtTokenDetector"
# Every pattern is matched within pieces of at most this many characters (a longer line is cut into
# overlapping pieces): some patterns backtrack, and the JWT one costs time quadratic in a line's length
# (900 KB of "eyJ" took 263 s while holding the GIL). Credentials are far shorter than the overlap.
PIECE_CHARS = 1024
PIECE_OVERLAP = 256


def _load(dotted: str):
    import importlib

    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(f"detect_secrets.plugins.{module}"), name)()


@lru_cache(maxsize=1)
def _detectors() -> tuple:
    return tuple(_load(dotted) for dotted in PLUGINS)


@lru_cache(maxsize=1)
def _jwt_detector():
    return _load(JWT_PLUGIN)


def pieces(text: str):
    """The lines of `text`, a long one as overlapping pieces of at most PIECE_CHARS characters."""
    step = PIECE_CHARS - PIECE_OVERLAP
    for line in text.splitlines():
        if len(line) <= PIECE_CHARS:
            yield line
        else:
            yield from (line[start:start + PIECE_CHARS] for start in range(0, len(line) - PIECE_OVERLAP, step))


def holds_secret(text: str) -> bool:
    """Whether `text` holds something shaped like a credential (the first match decides). Multi-line
    shapes (a private key block) are found by their first line."""
    detectors = _detectors()
    jwt = _jwt_detector() if "eyJ" in text else None
    for piece in pieces(text):
        if any(True for detector in detectors for _ in detector.analyze_string(piece)):
            return True
        if jwt is not None and "eyJ" in piece and jwt.analyze_line(filename="", line=piece):
            return True
    return False
