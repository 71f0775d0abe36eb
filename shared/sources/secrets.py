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


def holds_secret(text: str) -> bool:
    """Whether `text` holds something shaped like a credential (the first match decides)."""
    for detector in _detectors():
        for _ in detector.analyze_string(text):
            return True
    if "eyJ" not in text:
        return False
    jwt = _jwt_detector()
    return any(jwt.analyze_line(filename="", line=line) for line in text.splitlines() if "eyJ" in line)
