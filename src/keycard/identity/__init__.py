"""Identity: tokens and signing keys (service accounts, OIDC and STS arrive with the identity issue)."""
